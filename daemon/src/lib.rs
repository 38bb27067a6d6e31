//! shardd: the per-node storage daemon.
pub mod io;
pub mod store;
