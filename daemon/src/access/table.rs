//! The access table: rules that grant rights on namespaces, and the check.

use std::collections::BTreeSet;

use shardd_protocol::Namespace;

use super::{Identity, Need, Peer, Right};

/// A namespace pattern: a name, a prefix followed by `*`, or `*` alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this namespace.
    Exact(String),
    /// Every namespace that starts with this (empty: every namespace).
    Prefix(String),
}

impl Pattern {
    /// Parses `text`; `*` may appear only at the end.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let (stem, wildcard) = match text.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (text, false),
        };
        if stem.contains('*') {
            return Err(format!("{text:?}: `*` may only end a pattern (as in \"job-*\")"));
        }
        if !wildcard {
            Namespace::new(stem).map_err(|e| format!("{text:?}: {e}"))?;
            return Ok(Pattern::Exact(stem.to_string()));
        }
        if !stem.is_empty() {
            // A prefix must be the start of some valid name.
            Namespace::new(stem).map_err(|e| format!("{text:?}: {e}"))?;
        }
        Ok(Pattern::Prefix(stem.to_string()))
    }

    /// Whether `namespace` matches.
    pub fn matches(&self, namespace: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == namespace,
            Pattern::Prefix(stem) => namespace.starts_with(stem.as_str()),
        }
    }

    /// Whether it matches every namespace.
    pub fn is_everything(&self) -> bool {
        matches!(self, Pattern::Prefix(stem) if stem.is_empty())
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Exact(name) => write!(f, "{name}"),
            Pattern::Prefix(stem) => write!(f, "{stem}*"),
        }
    }
}

/// Who a rule is for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subjects {
    /// Unix users, by uid.
    pub uids: Vec<u32>,
    /// Unix groups, by gid: a peer whose gid or whose user's groups hold one.
    pub gids: Vec<u32>,
    /// Every TCP peer (each authenticated, unless `auth = "none"`).
    pub tcp: bool,
    /// TCP peers that authenticated with a key of one of these ids.
    pub keys: Vec<String>,
    /// TLS peers whose certificate's subject has one of these common names.
    pub certificates: Vec<String>,
}

impl Subjects {
    fn include(&self, who: &Identity) -> bool {
        match who.peer {
            Peer::Unix { uid, .. } => self.uids.contains(&uid) || who.groups.iter().any(|g| self.gids.contains(g)),
            Peer::UnixUnknown => false,
            Peer::Tcp(_) => {
                self.tcp
                    || who.key.as_ref().is_some_and(|id| self.keys.contains(id))
                    || who
                        .certificate
                        .as_ref()
                        .is_some_and(|name| self.certificates.contains(name))
            }
        }
    }
}

/// One rule of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// How refusals name it: its `name`, or `access.rules[N]`.
    pub name: String,
    /// Who it is for.
    pub subjects: Subjects,
    /// The namespaces it covers.
    pub namespaces: Vec<Pattern>,
    /// What it grants on them.
    pub rights: BTreeSet<Right>,
}

impl Rule {
    fn covers(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|p| p.matches(namespace))
    }

    fn names(&self) -> String {
        let patterns: Vec<String> = self.namespaces.iter().map(|p| format!("\"{p}\"")).collect();
        let rights: Vec<&str> = self.rights.iter().map(|r| r.name()).collect();
        format!(
            "rule \"{}\" ({} on {})",
            self.name,
            rights.join(", "),
            patterns.join(", ")
        )
    }
}

/// The access table in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessTable {
    /// The rules; none means every peer may do everything.
    pub rules: Vec<Rule>,
    /// The daemon's own uid, trusted like root.
    pub daemon_uid: u32,
}

impl Default for AccessTable {
    fn default() -> Self {
        AccessTable::open()
    }
}

impl AccessTable {
    /// No rules: every peer the socket admits may do everything.
    pub fn open() -> AccessTable {
        AccessTable {
            rules: Vec::new(),
            daemon_uid: nix::unistd::geteuid().as_raw(),
        }
    }

    /// Whether any rules are configured.
    pub fn is_open(&self) -> bool {
        self.rules.is_empty()
    }

    fn trusts(&self, who: &Identity) -> bool {
        self.is_open() || who.uid().is_some_and(|uid| uid == 0 || uid == self.daemon_uid)
    }

    /// Whether `who` may do what `need` says; else why not, naming the
    /// rules that fell short and the setting that changes it.
    pub fn check(&self, who: &Identity, need: Need<'_>) -> Result<(), String> {
        let Need::On(namespace, right) = need else {
            return Ok(());
        };
        if self.trusts(who) {
            return Ok(());
        }
        let namespace = namespace.as_str();
        let theirs: Vec<&Rule> = self.rules.iter().filter(|r| r.subjects.include(who)).collect();
        let covering: Vec<&&Rule> = theirs.iter().filter(|r| r.covers(namespace)).collect();
        if covering.iter().any(|r| r.rights.contains(&right)) {
            return Ok(());
        }
        let why = if !covering.is_empty() {
            let names: Vec<String> = covering.iter().map(|r| r.names()).collect();
            format!("{} grants no {right} there", names.join(" and "))
        } else if theirs.is_empty() {
            format!("no rule of [access] is for {who}")
        } else {
            let names: Vec<String> = theirs.iter().map(|r| r.names()).collect();
            format!(
                "no rule covers namespace \"{namespace}\" (theirs: {})",
                names.join("; ")
            )
        };
        Err(format!(
            "{who} may not {} namespace \"{namespace}\": {why}; rights are granted by access.rules in the configuration",
            verb(right)
        ))
    }

    /// Whether `who` may read every namespace (the whole arena is handed
    /// only to such peers, since a mapped arena shows every cached shard).
    pub fn reads_everything(&self, who: &Identity) -> bool {
        self.trusts(who)
            || self.rules.iter().any(|r| {
                r.subjects.include(who)
                    && r.rights.contains(&Right::Read)
                    && r.namespaces.iter().any(Pattern::is_everything)
            })
    }
}

fn verb(right: Right) -> &'static str {
    match right {
        Right::Read => "read",
        Right::Write => "write to",
        Right::Admin => "administer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(uid: u32, groups: &[u32]) -> Identity {
        Identity {
            peer: Peer::Unix {
                uid,
                gid: groups[0],
                pid: 1,
            },
            user: Some(format!("user{uid}")),
            groups: groups.to_vec(),
            key: None,
            certificate: None,
        }
    }

    fn rule(name: &str, subjects: Subjects, patterns: &[&str], rights: &[Right]) -> Rule {
        Rule {
            name: name.into(),
            subjects,
            namespaces: patterns.iter().map(|p| Pattern::parse(p).unwrap()).collect(),
            rights: rights.iter().copied().collect(),
        }
    }

    fn table() -> AccessTable {
        AccessTable {
            rules: vec![
                rule(
                    "alice",
                    Subjects {
                        uids: vec![1001],
                        ..Subjects::default()
                    },
                    &["alice-*"],
                    &[Right::Read, Right::Write, Right::Admin],
                ),
                rule(
                    "trainers read shared",
                    Subjects {
                        gids: vec![500],
                        ..Subjects::default()
                    },
                    &["shared"],
                    &[Right::Read],
                ),
                rule(
                    "remote trainers",
                    Subjects {
                        keys: vec!["trainers".into()],
                        ..Subjects::default()
                    },
                    &["job-*"],
                    &[Right::Read, Right::Write],
                ),
            ],
            daemon_uid: 999,
        }
    }

    fn ns(name: &str) -> Namespace {
        Namespace::new(name).unwrap()
    }

    #[test]
    fn rules_grant_by_user_group_and_pattern_and_refusals_name_the_rule() {
        let table = table();
        let alice = unix(1001, &[1001, 500]);
        let bob = unix(1002, &[1002, 500]);
        let eve = unix(1003, &[1003]);
        assert!(table.check(&alice, Need::On(&ns("alice-7"), Right::Admin)).is_ok());
        assert!(table.check(&alice, Need::On(&ns("shared"), Right::Read)).is_ok());
        assert!(table.check(&bob, Need::On(&ns("shared"), Right::Read)).is_ok());

        let refused = table.check(&bob, Need::On(&ns("shared"), Right::Write)).unwrap_err();
        assert!(
            refused.contains("uid 1002 (user1002) may not write to namespace \"shared\""),
            "{refused}"
        );
        assert!(
            refused.contains("rule \"trainers read shared\" (read on \"shared\") grants no write"),
            "{refused}"
        );
        assert!(refused.contains("access.rules"), "{refused}");

        let refused = table.check(&bob, Need::On(&ns("alice-7"), Right::Read)).unwrap_err();
        assert!(refused.contains("no rule covers namespace \"alice-7\""), "{refused}");
        let refused = table.check(&eve, Need::On(&ns("shared"), Right::Read)).unwrap_err();
        assert!(refused.contains("no rule of [access] is for uid 1003"), "{refused}");

        assert!(table.check(&eve, Need::Nothing).is_ok());
        let tcp = Identity::resolve(Peer::Tcp("127.0.0.1:5".parse().unwrap()));
        assert!(table.check(&tcp, Need::On(&ns("shared"), Right::Read)).is_err());
    }

    #[test]
    fn tcp_peers_get_the_rights_of_their_key() {
        let table = table();
        let with_key = |id: &str| Identity {
            key: Some(id.into()),
            ..Identity::resolve(Peer::Tcp("10.0.0.5:40000".parse().unwrap()))
        };
        let trainer = with_key("trainers");
        assert!(table.check(&trainer, Need::On(&ns("job-a"), Right::Write)).is_ok());
        let refused = table.check(&trainer, Need::On(&ns("job-a"), Right::Admin)).unwrap_err();
        assert!(
            refused.contains("key \"trainers\" (TCP peer 10.0.0.5:40000) may not administer"),
            "{refused}"
        );
        let other = with_key("other");
        let refused = table.check(&other, Need::On(&ns("job-a"), Right::Read)).unwrap_err();
        assert!(
            refused.contains("no rule of [access] is for key \"other\""),
            "{refused}"
        );
    }

    #[test]
    fn root_and_the_daemons_user_are_trusted_and_an_empty_table_allows_all() {
        let table = table();
        for trusted in [unix(0, &[0]), unix(999, &[999])] {
            assert!(table.check(&trusted, Need::On(&ns("any"), Right::Admin)).is_ok());
            assert!(table.reads_everything(&trusted));
        }
        assert!(!table.reads_everything(&unix(1001, &[1001])));
        let open = AccessTable::open();
        assert!(
            open.check(&unix(1003, &[1003]), Need::On(&ns("any"), Right::Admin))
                .is_ok()
        );
    }

    #[test]
    fn patterns_are_names_prefixes_or_everything() {
        assert!(Pattern::parse("job-*").unwrap().matches("job-1"));
        assert!(!Pattern::parse("job-*").unwrap().matches("jo"));
        assert!(Pattern::parse("*").unwrap().is_everything());
        assert!(Pattern::parse("job").unwrap().matches("job"));
        assert!(!Pattern::parse("job").unwrap().matches("job-1"));
        assert!(Pattern::parse("j*b").unwrap_err().contains("may only end"));
        assert!(Pattern::parse("a/b").is_err());
    }
}
