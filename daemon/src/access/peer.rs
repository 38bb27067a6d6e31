//! The peer at the other end of a connection, and who it is.

use std::net::SocketAddr;

use nix::unistd::{Gid, Uid, User};

/// The other end of a connection, as the socket tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A process on this node (`SO_PEERCRED`).
    Unix {
        /// Its effective user id.
        uid: u32,
        /// Its effective group id.
        gid: u32,
        /// Its process id (0 where the kernel gave none).
        pid: i32,
    },
    /// A Unix peer whose credentials could not be read: it gets no rights
    /// from the table.
    UnixUnknown,
    /// A TCP peer.
    Tcp(SocketAddr),
}

impl Peer {
    /// The credentials of a Unix peer.
    pub fn of_unix(stream: &tokio::net::UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(cred) => Peer::Unix {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid().unwrap_or(0),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the credentials of a Unix peer");
                Peer::UnixUnknown
            }
        }
    }

    /// What connections per peer are counted by: the uid of a Unix peer,
    /// the IP address of a TCP one.
    pub fn counted_as(&self) -> String {
        match self {
            Peer::Unix { uid, .. } => format!("uid {uid}"),
            Peer::UnixUnknown => "a Unix peer of unknown uid".to_string(),
            Peer::Tcp(addr) => format!("address {}", addr.ip()),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Unix { uid, gid, pid } => write!(f, "pid {pid} uid {uid} gid {gid}"),
            Peer::UnixUnknown => f.write_str("unknown"),
            Peer::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// A peer and what the access table matches it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The peer.
    pub peer: Peer,
    /// The user's name, where the system knows it.
    pub user: Option<String>,
    /// The groups of a Unix peer: its gid and the groups its user is a
    /// member of.
    pub groups: Vec<u32>,
    /// The id of the key a TCP peer authenticated with.
    pub key: Option<String>,
    /// The common name of the certificate a TLS peer showed.
    pub certificate: Option<String>,
}

impl Identity {
    /// Resolves who `peer` is. For a Unix peer this asks the system's user
    /// database (it may block: call it off the async threads).
    pub fn resolve(peer: Peer) -> Identity {
        let Peer::Unix { uid, gid, .. } = peer else {
            return Identity {
                peer,
                user: None,
                groups: Vec::new(),
                key: None,
                certificate: None,
            };
        };
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        let mut groups = vec![gid];
        if let Some(user) = &user
            && let Ok(name) = std::ffi::CString::new(user.name.as_str())
            && let Ok(list) = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
        {
            groups.extend(list.into_iter().map(Gid::as_raw));
        }
        groups.sort_unstable();
        groups.dedup();
        Identity {
            peer,
            user: user.map(|u| u.name),
            groups,
            key: None,
            certificate: None,
        }
    }

    /// The uid of a Unix peer.
    pub fn uid(&self) -> Option<u32> {
        match self.peer {
            Peer::Unix { uid, .. } => Some(uid),
            _ => None,
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.peer, &self.user) {
            (Peer::Unix { uid, .. }, Some(name)) => write!(f, "uid {uid} ({name})"),
            (Peer::Unix { uid, .. }, None) => write!(f, "uid {uid}"),
            (Peer::UnixUnknown, _) => f.write_str("a Unix peer of unknown uid"),
            (Peer::Tcp(addr), _) => match (&self.certificate, &self.key) {
                (Some(name), _) => write!(f, "certificate \"{name}\" (TLS peer {addr})"),
                (None, Some(id)) => write!(f, "key \"{id}\" (TCP peer {addr})"),
                (None, None) => write!(f, "TCP peer {addr}"),
            },
        }
    }
}
