//! Checks of arriving mail: SPF, DKIM, DMARC and ARC, and the header that reports them.
