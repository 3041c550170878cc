//! The job channel's frame decoder (src/ipc.rs) fed arbitrary bytes, in arbitrary pieces, as
//! the master's non-blocking reads deliver them: no panic (an out-of-range slice would be
//! one), the same frames whatever the pieces, and the worker's blocking reader decodes the
//! same frames.
#![no_main]

use forkpool::fuzzing::{read_frame, FrameBuffer, FromKeeper, FromWorker, ToKeeper, ToWorker};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

/// Decodes `bytes` as frames of `T`, delivered in pieces of `step` bytes; returns the
/// frames' debug text up to the first error (`"error"` then).
fn through_buffer<T: DeserializeOwned + std::fmt::Debug>(bytes: &[u8], step: usize) -> Vec<String> {
    let mut buffer = FrameBuffer::default();
    let mut seen = Vec::new();
    for piece in bytes.chunks(step.max(1)) {
        buffer.extend(piece);
        while let Some(frame) = buffer.next_frame::<T>() {
            match frame {
                Ok(frame) => seen.push(format!("{frame:?}")),
                Err(_) => {
                    seen.push("error".to_string());
                    return seen;
                }
            }
        }
    }
    seen
}

/// The same bytes through the worker's blocking reader.
fn through_reader<T: DeserializeOwned + std::fmt::Debug>(mut bytes: &[u8]) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match read_frame::<T>(&mut bytes) {
            Ok(Some(frame)) => seen.push(format!("{frame:?}")),
            Ok(None) => return seen,
            Err(_) => {
                seen.push("error".to_string());
                return seen;
            }
        }
    }
}

fn check<T: DeserializeOwned + std::fmt::Debug>(bytes: &[u8], step: usize) {
    let buffered = through_buffer::<T>(bytes, step);
    let whole = through_buffer::<T>(bytes, bytes.len());
    assert_eq!(buffered, whole, "the pieces a read returns do not matter");
    let read = through_reader::<T>(bytes);
    // The blocking reader also reports a frame cut short (the buffer waits for the rest).
    let complete = if read.last().is_some_and(|l| l == "error") && read.len() > whole.len() {
        &read[..whole.len()]
    } else {
        &read[..]
    };
    assert_eq!(
        whole, complete,
        "the master and a worker read the same frames"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(control >> 2) + 1;
    match control & 3 {
        0 => check::<ToWorker>(bytes, step),
        1 => check::<FromWorker>(bytes, step),
        2 => check::<ToKeeper>(bytes, step),
        _ => check::<FromKeeper>(bytes, step),
    }
});
