-- The cluster's directory: users (argon2id hashes only), aliases, users' keys and
-- encryption choices. Local domains stay in each node's config (`[local] domains`).
-- Every change NOTIFYs `relay_directory`; nodes reload their cached snapshot on it.

CREATE TABLE users (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9._-]{1,64}$'),
    password    text NOT NULL CHECK (password LIKE '$argon2id$%'),
    quota       bigint CHECK (quota >= 0),
    apop_secret text CHECK (apop_secret <> ''),
    home        text CHECK (home ~ '^[a-z0-9-]{1,32}$')
);

-- `alias` is a bare local part or `local@domain` with a local domain; targets are users,
-- other aliases or remote addresses, expanded in `position` order.
CREATE TABLE aliases (
    alias    text NOT NULL CHECK (alias <> ''),
    position integer NOT NULL,
    target   text NOT NULL CHECK (target <> ''),
    PRIMARY KEY (alias, position)
);

-- The entries of src/mailbox/keys.rs: `openpgp` (armoured key), `smime` (PEM certificate),
-- `encrypt` (`on` or `off`). No foreign key: users of a node's own users file may register
-- keys here too; `relay user del` removes a user's rows.
CREATE TABLE user_keys (
    name text NOT NULL CHECK (name ~ '^[a-z0-9._-]{1,64}$'),
    kind text NOT NULL CHECK (kind IN ('openpgp', 'smime', 'encrypt')),
    data text NOT NULL CHECK (length(data) <= 1048576),
    PRIMARY KEY (name, kind)
);

CREATE FUNCTION relay_directory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One notification per transaction and channel: PostgreSQL folds identical ones.
    PERFORM pg_notify('relay_directory', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER users_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION relay_directory_changed();
CREATE TRIGGER aliases_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON aliases
    FOR EACH STATEMENT EXECUTE FUNCTION relay_directory_changed();
CREATE TRIGGER user_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON user_keys
    FOR EACH STATEMENT EXECUTE FUNCTION relay_directory_changed();
