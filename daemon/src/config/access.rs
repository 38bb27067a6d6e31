//! `[access]`: the access table (see [`crate::access`]).

use serde::Deserialize;

use super::invalid;
use crate::access::{AccessTable, Pattern, Right, Rule, Subjects};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileAccess {
    rules: Vec<FileRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    name: Option<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    tcp: bool,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    certificates: Vec<String>,
    namespaces: Vec<String>,
    rights: Vec<Right>,
}

impl FileAccess {
    /// The table, with user and group names resolved to ids now (a name the
    /// system does not know is an error; a number is taken as an id).
    pub(super) fn resolve(self) -> anyhow::Result<AccessTable> {
        let mut table = AccessTable::open();
        for (i, rule) in self.rules.into_iter().enumerate() {
            let key = format!("access.rules[{i}]");
            if rule.users.is_empty()
                && rule.groups.is_empty()
                && rule.keys.is_empty()
                && rule.certificates.is_empty()
                && !rule.tcp
            {
                return Err(invalid(
                    &key,
                    "names no users, groups, keys, certificates or tcp = true: it is for no one",
                ));
            }
            for id in &rule.keys {
                shardd_protocol::auth::check_key_id(id).map_err(|e| invalid(&format!("{key}.keys"), e))?;
            }
            if rule.namespaces.is_empty() {
                return Err(invalid(
                    &format!("{key}.namespaces"),
                    "empty; name a namespace, a prefix like \"job-*\", or \"*\"",
                ));
            }
            if rule.rights.is_empty() {
                return Err(invalid(&format!("{key}.rights"), "empty; use read, write and admin"));
            }
            let uids = rule
                .users
                .iter()
                .map(|u| user_id(u).map_err(|e| invalid(&format!("{key}.users"), e)))
                .collect::<anyhow::Result<Vec<u32>>>()?;
            let gids = rule
                .groups
                .iter()
                .map(|g| group_id(g).map_err(|e| invalid(&format!("{key}.groups"), e)))
                .collect::<anyhow::Result<Vec<u32>>>()?;
            let namespaces = rule
                .namespaces
                .iter()
                .map(|p| Pattern::parse(p).map_err(|e| invalid(&format!("{key}.namespaces"), e)))
                .collect::<anyhow::Result<Vec<Pattern>>>()?;
            table.rules.push(Rule {
                name: rule.name.unwrap_or(key),
                subjects: Subjects {
                    uids,
                    gids,
                    tcp: rule.tcp,
                    keys: rule.keys,
                    certificates: rule.certificates,
                },
                namespaces,
                rights: rule.rights.into_iter().collect(),
            });
        }
        Ok(table)
    }
}

fn user_id(name: &str) -> Result<u32, String> {
    if let Ok(uid) = name.parse() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => Err(format!("no user named {name:?} on this system")),
        Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
    }
}

pub(super) fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no group named {name:?} on this system")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}
