//! The job channel round trip (src/ipc.rs): any message the fuzzer can spell (as the JSON a
//! frame carries) is encoded, split anywhere, decoded by the master's buffer and by a
//! worker's blocking reader, and comes back as the same message (re-encoded to the same
//! bytes), with nothing left over.
#![no_main]

use forkpool::fuzzing::{
    encode, read_frame, FrameBuffer, FromKeeper, FromWorker, ToKeeper, ToWorker,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: DeserializeOwned + Serialize>(json: &[u8], split: usize) {
    let Ok(message) = serde_json::from_slice::<T>(json) else {
        return;
    };
    let frame = encode(&message);
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4, "the prefix is the body's length");

    // Two frames back to back, split at an arbitrary point.
    let twice = [&frame[..], &frame[..]].concat();
    let split = split % (twice.len() + 1);
    let mut buffer = FrameBuffer::default();
    let mut decoded = Vec::new();
    for piece in [&twice[..split], &twice[split..]] {
        buffer.extend(piece);
        while let Some(next) = buffer.next_frame::<T>() {
            decoded.push(next.expect("an encoded frame decodes"));
        }
    }
    assert_eq!(decoded.len(), 2, "both frames, no more");
    for again in &decoded {
        assert!(encode(again) == frame, "decoded then re-encoded differs");
    }

    let mut reader = &twice[..];
    for _ in 0..2 {
        let again = read_frame::<T>(&mut reader)
            .expect("an encoded frame reads")
            .expect("not at the end yet");
        assert!(encode(&again) == frame);
    }
    assert!(
        read_frame::<T>(&mut reader).unwrap().is_none(),
        "a clean end"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, json)) = data.split_first() else {
        return;
    };
    let split = usize::from(control >> 2) * 7;
    match control & 3 {
        0 => round_trip::<ToWorker>(json, split),
        1 => round_trip::<FromWorker>(json, split),
        2 => round_trip::<ToKeeper>(json, split),
        _ => round_trip::<FromKeeper>(json, split),
    }
});
