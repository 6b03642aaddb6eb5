-- wrk script of benches/webmail_compare.sh: counts answers that are not a 200 carrying the
-- marker text (args[1], e.g. the newest message's subject), since a lost session answers
-- with a login page or a redirect that wrk alone would count as a success; prints one JSON
-- line ("JSON {...}") with the rate, latency quantiles (ms) and those counts.
-- The session cookie (and Roundcube's X-Roundcube-Request token) come as wrk -H headers.
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    marker = args[1] or ""
    bad = 0
end

function response(status, headers, body)
    if status ~= 200 or (marker ~= "" and not string.find(body, marker, 1, true)) then
        bad = bad + 1
    end
end

function done(summary, latency, requests)
    local bad_total = 0
    for _, t in ipairs(threads) do
        bad_total = bad_total + t:get("bad")
    end
    local e = summary.errors
    local seconds = summary.duration / 1e6
    io.write(string.format(
        'JSON {"requests":%d,"seconds":%.3f,"per_s":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"bad":%d,"errors":%d}\n',
        summary.requests, seconds, summary.requests / seconds,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000, bad_total,
        e.connect + e.read + e.write + e.status + e.timeout))
end
