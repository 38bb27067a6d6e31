//! `[[namespaces]]`: quotas and lifetimes of namespaces, by pattern (see
//! [`crate::service::quota`]).

use serde::Deserialize;

use super::invalid;
use super::units::{Size, Span};
use crate::access::Pattern;
use crate::service::quota::{NamespacePolicies, NamespacePolicy};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileNamespace {
    pattern: String,
    max_drive_bytes: Option<Size>,
    max_arena_bytes: Option<Size>,
    idle_ttl: Option<Span>,
}

/// The policies, in the file's order (the first whose pattern matches a
/// namespace applies to it).
pub(super) fn resolve(file: Vec<FileNamespace>) -> anyhow::Result<NamespacePolicies> {
    let mut policies = Vec::with_capacity(file.len());
    for (i, entry) in file.into_iter().enumerate() {
        let key = format!("namespaces[{i}]");
        let pattern = Pattern::parse(&entry.pattern).map_err(|e| invalid(&format!("{key}.pattern"), e))?;
        if entry.max_drive_bytes.is_none() && entry.max_arena_bytes.is_none() && entry.idle_ttl.is_none() {
            return Err(invalid(
                &key,
                "sets none of max_drive_bytes, max_arena_bytes and idle_ttl",
            ));
        }
        let idle_ttl = entry.idle_ttl.map(|s| s.0);
        if idle_ttl.is_some_and(|d| d < std::time::Duration::from_secs(1)) {
            return Err(invalid(&format!("{key}.idle_ttl"), "must be at least 1s"));
        }
        policies.push(NamespacePolicy {
            pattern,
            max_drive_bytes: entry.max_drive_bytes.map(|s| s.0),
            max_arena_bytes: entry.max_arena_bytes.map(|s| s.0),
            idle_ttl,
        });
    }
    Ok(NamespacePolicies(policies))
}
