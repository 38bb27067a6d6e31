//! The pinned-memory arena: one memfd-backed region, locked where the
//! memlock limit allows, carved into blocks for cached shard chunks.
pub mod alloc;
