//! Every control message decoder, in one list that the property tests
//! (`tests/decoders.rs`) and the fuzz targets (`fuzz/`) share, so that a
//! new message cannot be left out of one and not the other: chosen by a
//! selector, each held to the same property (no input panics it; whatever
//! decodes has exactly one encoding).

use serde::Serialize;
use serde::de::DeserializeOwned;
use shardd_protocol::*;

/// What a decoder must do with any input: return, and if it returns a
/// value, that value's encoding is the input.
fn decodes_canonically<T: Serialize + DeserializeOwned + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(value) = codec::decode::<T>(bytes) {
        let again = codec::encode(&value).expect("a decoded message encodes");
        assert_eq!(again, bytes, "{value:?} has another encoding");
    }
}

/// How many decoders [`decode_control`] chooses from.
pub const DECODERS: u8 = 45;

/// Decodes `bytes` as the control message `selector` names (modulo
/// [`DECODERS`]); panics if a decoder does or breaks the property.
pub fn decode_control(selector: u8, bytes: &[u8]) {
    match selector % DECODERS {
        0 => decodes_canonically::<HelloRequest>(bytes),
        1 => decodes_canonically::<HelloResponse>(bytes),
        2 => decodes_canonically::<PutRequest>(bytes),
        3 => decodes_canonically::<PutResponse>(bytes),
        4 => decodes_canonically::<FetchRequest>(bytes),
        5 => decodes_canonically::<FetchResponse>(bytes),
        6 => decodes_canonically::<StatRequest>(bytes),
        7 => decodes_canonically::<StatResponse>(bytes),
        8 => decodes_canonically::<ListRequest>(bytes),
        9 => decodes_canonically::<ListResponse>(bytes),
        10 => decodes_canonically::<DeleteRequest>(bytes),
        11 => decodes_canonically::<DeleteResponse>(bytes),
        12 => decodes_canonically::<StatusResponse>(bytes),
        13 => decodes_canonically::<PrefetchRequest>(bytes),
        14 => decodes_canonically::<PrefetchResponse>(bytes),
        15 => decodes_canonically::<EvictRequest>(bytes),
        16 => decodes_canonically::<EvictResponse>(bytes),
        17 => decodes_canonically::<ScheduleRequest>(bytes),
        18 => decodes_canonically::<ScheduleResponse>(bytes),
        19 => decodes_canonically::<ViewRequest>(bytes),
        20 => decodes_canonically::<ViewResponse>(bytes),
        21 => decodes_canonically::<ReleaseRequest>(bytes),
        22 => decodes_canonically::<ReleaseResponse>(bytes),
        23 => decodes_canonically::<VerifyRequest>(bytes),
        24 => decodes_canonically::<VerifyResponse>(bytes),
        25 => decodes_canonically::<ErrorResponse>(bytes),
        26 => decodes_canonically::<NamespacesRequest>(bytes),
        27 => decodes_canonically::<NamespacesResponse>(bytes),
        28 => decodes_canonically::<DropNamespaceRequest>(bytes),
        29 => decodes_canonically::<DropNamespaceResponse>(bytes),
        30 => decodes_canonically::<SetQuotaRequest>(bytes),
        31 => decodes_canonically::<SetQuotaResponse>(bytes),
        32 => decodes_canonically::<FetchBatchRequest>(bytes),
        33 => decodes_canonically::<ViewBatchRequest>(bytes),
        34 => decodes_canonically::<PutBatchRequest>(bytes),
        35 => decodes_canonically::<StatBatchRequest>(bytes),
        36 => decodes_canonically::<RegisterRegionRequest>(bytes),
        37 => decodes_canonically::<RegisterRegionResponse>(bytes),
        38 => decodes_canonically::<ReleaseRegionRequest>(bytes),
        39 => decodes_canonically::<AuthenticateRequest>(bytes),
        40 => decodes_canonically::<AuthenticateResponse>(bytes),
        41 => decodes_canonically::<PrepareFetchResponse>(bytes),
        42 => decodes_canonically::<FetchPreparedRequest>(bytes),
        43 => decodes_canonically::<ReleasePreparedRequest>(bytes),
        _ => decodes_canonically::<Vec<BatchPart>>(bytes),
    }
}
