//! Who may do what: the peers of the daemon's sockets and the access table
//! that grants them rights on namespaces.
//!
//! Each Unix peer is known by its credentials (`SO_PEERCRED`: uid, gid,
//! pid) and the groups its user belongs to; a TCP peer by the id of the key
//! it authenticated with (see [`crate::auth`]) and its address. The table
//! is a list of rules, each granting `read`, `write` or `admin` on
//! namespace patterns to users, groups, key ids, or every TCP peer. A request needs one right on its namespace
//! (see [`Need`]); the server checks it in one place, before the request
//! reaches the service, and a refusal names the rule that fell short.
//!
//! With no rules configured, every peer the socket admits may do
//! everything (the daemon says so once at start). Root and the daemon's
//! own user are trusted and always may.
//!
//! # Layout
//!
//! * [`peer`]: peers and the identities resolved from them.
//! * [`table`]: rules, patterns, and the check.

pub mod peer;
pub mod table;

pub use peer::{Identity, Peer};
pub use table::{AccessTable, Pattern, Rule, Subjects};

/// A right a rule grants on a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Fetch, view, stat, list, prefetch, verify, and evict to the drive.
    Read,
    /// Put.
    Write,
    /// Delete, `evict --drop`, schedules, and other namespaces in listings.
    Admin,
}

impl Right {
    /// Its name in the configuration and in refusals.
    pub const fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a request needs of the access table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need<'a> {
    /// Nothing: it names no namespace (ping, release, status).
    Nothing,
    /// `right` on `namespace`.
    On(&'a shardd_protocol::Namespace, Right),
}
