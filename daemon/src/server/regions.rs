//! Region registrations: over a Unix socket the region's memfd (taken in
//! by the connection's reader with the frame) is checked and mapped off the
//! async threads; over TCP only its length is recorded.

use shardd_protocol::{Opcode, RegisterRegionRequest, RegisterRegionResponse, ReleaseRegionRequest};

use super::dispatch::{Handled, Task};
use super::responder::{answer, error_frame};
use crate::service::Session;
use crate::service::regions::Region;
use crate::store::StoreError;

/// Registers the region `req` describes.
pub(super) fn register(task: Task<'_>, id: u64, req: RegisterRegionRequest) -> Handled {
    let op = Opcode::RegisterRegion;
    let session = task.session;
    let Some(passed) = &session.passed_fds else {
        let result = session.regions.add(Region::remote(req.len));
        let result = result.map(|region| RegisterRegionResponse { region, mapped: false });
        return Handled::Now(vec![answer(op, id, result)]);
    };
    // The descriptor came with this frame's first byte, so it is the
    // oldest waiting now (taken here, in the order frames arrive).
    let Some(fd) = passed.pop() else {
        let e = StoreError::BadRequest(
            "no memory file came with the region registration: over a Unix socket, attach the region's memfd \
             to the frame (SCM_RIGHTS)"
                .into(),
        );
        return Handled::Now(vec![error_frame(op, id, &e)]);
    };
    if let Err(e) = session.regions.check_room(req.len) {
        return Handled::Now(vec![error_frame(op, id, &e)]);
    }
    task.later(move |_, session, responder| async move {
        let len = req.len;
        let mapped = tokio::task::spawn_blocking(move || Region::map(fd, len)).await;
        let result = match mapped {
            Ok(Ok(region)) => session.regions.add(region),
            Ok(Err(reason)) => Err(StoreError::BadRequest(format!("region refused: {reason}"))),
            Err(e) => Err(StoreError::io("map a region", std::io::Error::other(e))),
        };
        let result = result.map(|region| RegisterRegionResponse { region, mapped: true });
        responder.send(answer(op, id, result)).await;
    })
}

/// Drops the descriptor that came with a registration refused before it
/// was looked at (Unix).
pub(super) fn forget_passed(session: &Session) {
    if let Some(passed) = &session.passed_fds {
        drop(passed.pop());
    }
}

/// Forgets a region (fetches into it under way finish first: they hold it).
pub(super) fn release(session: &Session, req: &ReleaseRegionRequest) -> Result<(), StoreError> {
    if session.regions.remove(req.region) {
        Ok(())
    } else {
        Err(StoreError::BadRequest(format!(
            "region {} is not registered on this connection",
            req.region
        )))
    }
}
