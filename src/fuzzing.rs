//! The parsers that take outside input, gathered for the fuzz targets in `fuzz/` (issue 16).
//!
//! Not part of the library's API. Most parsers are public already (`protocol`, `catalog`,
//! `config`, `pool` are `#[doc(hidden)] pub` for the integration tests); the job channel's
//! frames (`ipc`) stay crate-private, and are reached only through this facade, so the fuzz
//! targets run the real decoder without widening the crate's module surface.

pub use crate::ipc::{
    encode, read_frame, ClaimedJob, EnqueueOptions, FrameBuffer, FromKeeper, FromWorker, ToKeeper,
    ToWorker, MAX_FRAME,
};
