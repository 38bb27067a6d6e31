//! Members the daemon writes into a region the client registered (Unix):
//! the place is checked against the registration, and the member's answer
//! is bounded by the place.

use std::sync::Arc;

use shardd_protocol::{PlacedHead, PlacedPart, RegionPlace};

use crate::service::regions::{BatchPlaces, Region};
use crate::service::{Fetch, Piece, Resident};
use crate::store::StoreError;

/// A piece of at most this many bytes is written into its region by the
/// task that has it; a larger one by a blocking thread.
pub(super) const PLACE_AT_ONCE: u64 = 4 << 20;

/// Where the daemon writes a member's bytes itself.
#[derive(Clone, Debug)]
pub(super) struct Target {
    region: Arc<Region>,
    offset: u64,
}

impl Target {
    /// Writes `piece`, `at` bytes into the member's answer.
    fn write(&self, at: u64, piece: &Piece) {
        self.region.write(self.offset + at, piece.bytes());
    }

    /// Writes member `index` in the arena straight from it; the part that
    /// says what was written.
    pub(super) fn write_resident<'a>(&self, index: u32, fetch: &'a Resident) -> PlacedPart<'a> {
        fetch.write_to(|at, bytes| self.region.write(self.offset + at, bytes));
        PlacedPart {
            index,
            meta: fetch.meta(),
            offset: fetch.offset(),
            len: fetch.answer_len(),
        }
    }
}

/// Checks a member's place: where the daemon writes the member if it
/// does so itself (a region it mapped), `None` without a place or for a
/// region that stays in the client.
pub(super) fn placed(places: &mut BatchPlaces<'_>, place: Option<&RegionPlace>) -> Result<Option<Target>, StoreError> {
    let Some(place) = place else {
        return Ok(None);
    };
    let region = places.place(place)?;
    Ok(region.is_mapped().then(|| Target {
        region,
        offset: place.offset,
    }))
}

/// Writes a member's bytes into its place as they come; what was written.
pub(super) async fn place_member(mut fetch: Fetch, target: Target) -> Result<PlacedHead, StoreError> {
    let mut at = 0;
    while let Some(piece) = fetch.next().await {
        let piece = piece?;
        let len = piece.bytes().len() as u64;
        if len <= PLACE_AT_ONCE {
            target.write(at, &piece);
            // Pieces in the arena come without waiting: let other tasks
            // run between copies.
            tokio::task::yield_now().await;
        } else {
            let target = target.clone();
            tokio::task::spawn_blocking(move || target.write(at, &piece))
                .await
                .map_err(|e| StoreError::io("write into a region", std::io::Error::other(e)))?;
        }
        at += len;
    }
    Ok(PlacedHead::of(&fetch.head.meta, fetch.head.offset, fetch.head.len))
}
