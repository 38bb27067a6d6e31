//! Versions handed out to puts still in progress.
//!
//! A put's version is chosen when the put begins, but the index learns of
//! it only when the put is published. Without a record of the versions in
//! between, two puts of one key with automatic versions that overlap would
//! both be given the stored version plus one: two acknowledged puts, two
//! different contents, one version. Each put therefore holds a
//! [`Reservation`] from the moment its version is chosen until it is
//! published or abandoned (a write-back put: until its flush ends), and
//! automatic versions start above every reservation of the key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use shardd_protocol::{Key, Namespace};

/// The reservations of every key with a put in progress.
#[derive(Debug, Default)]
pub struct Reservations {
    keys: Arc<Keys>,
}

/// One key's reservations.
#[derive(Debug)]
struct Reserved {
    /// The highest version handed out while puts of the key were in progress.
    highest: u64,
    /// How many of them still are.
    puts: u32,
}

type Keys = Mutex<HashMap<(Namespace, Key), Reserved>>;

/// The map, also after a panic elsewhere held its lock (each change to it
/// is a single step, so it is never left half-done).
fn lock(keys: &Keys) -> MutexGuard<'_, HashMap<(Namespace, Key), Reserved>> {
    keys.lock().unwrap_or_else(|p| p.into_inner())
}

impl Reservations {
    /// Chooses a version with `choose` (given the highest version reserved
    /// by puts of the key in progress, if any) and reserves it, atomically
    /// with respect to other puts of the key.
    pub fn reserve<E>(
        &self,
        namespace: &Namespace,
        key: &Key,
        choose: impl FnOnce(Option<u64>) -> Result<u64, E>,
    ) -> Result<Reservation, E> {
        let id = (namespace.clone(), key.clone());
        let mut keys = lock(&self.keys);
        let version = choose(keys.get(&id).map(|r| r.highest))?;
        let reserved = keys.entry(id.clone()).or_insert(Reserved { highest: 0, puts: 0 });
        reserved.highest = reserved.highest.max(version);
        reserved.puts += 1;
        Ok(Reservation {
            keys: self.keys.clone(),
            id,
            version,
        })
    }

    /// Keys with puts in progress (for tests).
    #[cfg(test)]
    pub fn keys_in_progress(&self) -> usize {
        lock(&self.keys).len()
    }
}

/// A version held for a put until it is published or abandoned (dropped).
#[derive(Debug)]
pub struct Reservation {
    keys: Arc<Keys>,
    id: (Namespace, Key),
    version: u64,
}

impl Reservation {
    /// The version.
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut keys = lock(&self.keys);
        if let Some(reserved) = keys.get_mut(&self.id) {
            reserved.puts -= 1;
            if reserved.puts == 0 {
                keys.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (Namespace, Key) {
        (Namespace::new("ns").unwrap(), Key::new("k").unwrap())
    }

    fn next(highest: Option<u64>) -> Result<u64, ()> {
        Ok(highest.unwrap_or(0) + 1)
    }

    #[test]
    fn overlapping_puts_see_each_others_versions_until_the_last_ends() {
        let reservations = Reservations::default();
        let (ns, key) = names();
        let a = reservations.reserve(&ns, &key, next).unwrap();
        let b = reservations.reserve(&ns, &key, next).unwrap();
        assert_eq!((a.version(), b.version()), (1, 2));
        drop(b);
        // `a` is still in progress: the highest reserved version stays.
        let c = reservations.reserve(&ns, &key, next).unwrap();
        assert_eq!(c.version(), 3);
        drop((a, c));
        assert_eq!(reservations.keys_in_progress(), 0);
        let d = reservations.reserve(&ns, &key, next).unwrap();
        assert_eq!(d.version(), 1, "with no put in progress nothing is reserved");
    }

    #[test]
    fn a_refused_version_reserves_nothing() {
        let reservations = Reservations::default();
        let (ns, key) = names();
        let refused = reservations.reserve(&ns, &key, |_| Err::<u64, &str>("conflict"));
        assert_eq!(refused.unwrap_err(), "conflict");
        assert_eq!(reservations.keys_in_progress(), 0);
    }
}
