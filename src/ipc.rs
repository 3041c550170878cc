//! The job channel between the master and one worker: length-prefixed JSON frames over a
//! Unix stream socketpair made before the fork.
//!
//! DESIGN §2 planned `SOCK_SEQPACKET`. A stream with a 4-byte length prefix is used instead:
//! a job's result can be megabytes (10,000 rows), past what one datagram may carry, and a
//! stream lets the master take many frames from one read.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// A frame larger than this is a bug, not a job: refuse it instead of allocating it.
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// What the master tells a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run one job. `args` is the request's `args` object as the client sent it.
    Run {
        job_id: u64,
        job: String,
        args: Box<RawValue>,
        timeout_ms: u64,
    },
    /// Claim durable jobs and run them (DESIGN §12): one per claim id, all by the executor
    /// that reads this frame — one id (the default), or up to `queue.batch` ids whose jobs
    /// it runs as one batch. Sent only for an executor that is free, so a worker never holds
    /// a durable job no executor has taken. Queues in `excluded_queues` are at their
    /// `[queue.limits]` cap on this host.
    Claim {
        claim_ids: Vec<u64>,
        excluded_queues: Vec<String>,
    },
    /// Stop: finish the jobs already received, close pools, exit. (A fast stop is SIGINT:
    /// a worker busy with a long query would read no frame until it ends.)
    Stop,
}

/// [`ToWorker::Run`] as the master writes it, borrowing the job's name and arguments
/// instead of copying them per job: the same bytes on the channel.
#[derive(Debug, Serialize)]
pub enum ToWorkerRef<'a> {
    Run {
        job_id: u64,
        job: &'a str,
        args: &'a RawValue,
        timeout_ms: u64,
    },
}

/// What a worker tells the master.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// Reset done, threads started: the worker can take jobs.
    Ready,
    /// A job's outcome: `body` is the result object when `ok`, else the error object.
    Done {
        job_id: u64,
        ok: bool,
        body: Box<RawValue>,
    },
    /// Sent every tick: liveness, memory, and the pools' statistics for `status`.
    Heartbeat { rss_bytes: u64, pools: Value },
    /// What a claim took: `None` when nothing was runnable (or the claim failed: `error`).
    /// The slot stays busy until `Settled` when a job was taken.
    Claimed {
        claim_id: u64,
        job: Option<ClaimedJob>,
        error: Option<String>,
    },
    /// The claimed job was settled one way (`completed`, `retry`, `discarded`, `cancelled`,
    /// `released` by a stop, or `lost`: rescued meanwhile); its slot is free.
    Settled {
        claim_id: u64,
        job_id: i64,
        outcome: String,
    },
}

/// A durable job a worker claimed, as the master tracks it while it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimedJob {
    pub job_id: i64,
    pub job: String,
    pub queue: String,
    pub attempt: i32,
    /// The job's own timeout: past it plus the grace, the master kills the worker.
    pub timeout_ms: u64,
}

/// What the master asks the queue keeper (DESIGN §12); each request is answered once.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToKeeper {
    /// Store a job; `args` is the request's object as the client sent it.
    Enqueue {
        request: u64,
        job: String,
        args: Box<RawValue>,
        options: EnqueueOptions,
    },
    /// A `result` read of the job as it is now.
    Read {
        request: u64,
        job_id: i64,
    },
    Cancel {
        request: u64,
        job_id: i64,
    },
    /// A worker of this instance died: make its jobs runnable again now.
    RescueWorker {
        worker: i64,
        why: String,
    },
    /// Renew the leases of the durable jobs running on this host.
    Renew {
        job_ids: Vec<i64>,
    },
    /// `queues`, `pause`, `resume`: queue control, answered like a request.
    Queues {
        request: u64,
    },
    Pause {
        request: u64,
        queue: String,
    },
    Resume {
        request: u64,
        queue: String,
    },
    /// Every worker is gone: put back what this instance still holds, then exit.
    Stop,
    /// Exit without touching the jobs (a reload replaces the keeper; workers still run).
    Exit,
}

/// An enqueue's optional fields, as the request gave them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnqueueOptions {
    pub queue: Option<String>,
    pub priority: Option<i32>,
    pub run_at: Option<String>,
    pub delay_ms: Option<u64>,
    pub max_attempts: Option<i32>,
    pub unique_key: Option<String>,
}

/// What the queue keeper tells the master.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromKeeper {
    /// The schema is usable: durable work may be claimed.
    Ready {
        schema_version: i32,
    },
    /// Durable jobs wait (database unreachable, schema too old or too new): why.
    Unready {
        why: String,
    },
    /// One request's answer: the result object when `ok`, else the error object;
    /// `finished` when a `result` read found the job in a final state (or not found).
    Answer {
        request: u64,
        ok: bool,
        body: Box<RawValue>,
        finished: bool,
    },
    /// Jobs may be waiting (a NOTIFY, a reconnect, a rescue): idle slots should claim.
    Wake,
    /// Jobs taken back from a dead worker, for the counters.
    Rescued {
        count: u64,
    },
    /// Jobs by queue and state, and the hosts sharing the queue, for `status`.
    Counts {
        queues: Value,
        hosts: Value,
        schedules: Value,
    },
    Heartbeat {
        rss_bytes: u64,
    },
}

/// Encodes one frame: little-endian u32 length, then the JSON.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_into(&mut frame, message);
    frame
}

/// Appends one frame to `out` (several frames queued this way go out in one write): no
/// buffer of its own per frame.
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, message: &T) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    serde_json::to_writer(&mut *out, message).expect("frames always serialize");
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Blocking read of one frame (the worker's side). `Ok(None)` on a clean EOF between frames.
pub fn read_frame<T: for<'de> Deserialize<'de>>(reader: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The next frame if `reader` already holds all of it and `wanted` accepts it, decoded and
/// consumed; else `None` with nothing consumed (the next [`read_frame`] reads that frame).
/// Never reads from the socket.
pub fn buffered_frame<T: for<'de> Deserialize<'de>, R: Read>(
    reader: &mut BufReader<R>,
    wanted: impl Fn(&T) -> bool,
) -> Option<T> {
    let buffered = reader.buffer();
    let len = u32::from_le_bytes(buffered.get(..4)?.try_into().ok()?) as usize;
    let frame: T = serde_json::from_slice(buffered.get(4..4 + len)?).ok()?;
    if !wanted(&frame) {
        return None;
    }
    reader.consume(4 + len);
    Some(frame)
}

/// Blocking write of one frame (the worker's side).
pub fn write_frame<T: Serialize>(writer: &mut impl Write, message: &T) -> io::Result<()> {
    writer.write_all(&encode(message))
}

/// Accumulates bytes read from a non-blocking channel and yields whole frames (the master's
/// side, which never blocks on a worker).
///
/// Decoded frames are skipped by an offset, not drained one by one: a read that brings
/// hundreds of frames at once (the keeper's answers to a batch) would otherwise move the
/// rest of the buffer once per frame.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    bytes: Vec<u8>,
    /// Where the next frame starts; everything before it is decoded.
    start: usize,
}

impl FrameBuffer {
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(bytes);
    }

    /// The next complete frame, decoded; `None` while the frame is still incomplete.
    pub fn next_frame<T: for<'de> Deserialize<'de>>(&mut self) -> Option<io::Result<T>> {
        let bytes = &self.bytes[self.start..];
        if bytes.len() < 4 {
            return None;
        }
        let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame too large",
            )));
        }
        if bytes.len() < 4 + len {
            return None;
        }
        let decoded = serde_json::from_slice(&bytes[4..4 + len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        self.start += 4 + len;
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        }
        Some(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_being_split_anywhere() {
        let frames = [
            encode(&FromWorker::Ready),
            encode(&FromWorker::Done {
                job_id: 9,
                ok: true,
                body: RawValue::from_string(r#"{"rows":[{"a":"x"}]}"#.into()).unwrap(),
            }),
        ]
        .concat();
        for split in 0..frames.len() {
            let mut buffer = FrameBuffer::default();
            buffer.extend(&frames[..split]);
            let mut seen = Vec::new();
            while let Some(frame) = buffer.next_frame::<FromWorker>() {
                seen.push(frame.unwrap());
            }
            buffer.extend(&frames[split..]);
            while let Some(frame) = buffer.next_frame::<FromWorker>() {
                seen.push(frame.unwrap());
            }
            assert_eq!(seen.len(), 2, "split at {split}");
            match &seen[1] {
                FromWorker::Done { job_id, body, .. } => {
                    assert_eq!(*job_id, 9);
                    assert_eq!(body.get(), r#"{"rows":[{"a":"x"}]}"#);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_borrowed_run_is_the_same_frame_as_an_owned_one() {
        let args = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        let owned = encode(&ToWorker::Run {
            job_id: 3,
            job: "add".into(),
            args: args.clone(),
            timeout_ms: 50,
        });
        let mut borrowed = Vec::new();
        encode_into(&mut borrowed, &ToWorker::Stop);
        encode_into(
            &mut borrowed,
            &ToWorkerRef::Run {
                job_id: 3,
                job: "add",
                args: &args,
                timeout_ms: 50,
            },
        );
        assert_eq!(&borrowed[encode(&ToWorker::Stop).len()..], &owned[..]);
    }

    #[test]
    fn buffered_frames_are_taken_only_whole_wanted_and_already_read() {
        let run = |job_id| ToWorker::Run {
            job_id,
            job: "add".into(),
            args: RawValue::from_string("{}".into()).unwrap(),
            timeout_ms: 1,
        };
        let is_run = |frame: &ToWorker| matches!(frame, ToWorker::Run { .. });
        let mut bytes = [encode(&run(1)), encode(&run(2)), encode(&ToWorker::Stop)].concat();
        let last_run = encode(&run(3));
        bytes.extend_from_slice(&last_run[..last_run.len() - 1]);
        let mut reader = BufReader::new(&bytes[..]);
        assert!(matches!(
            read_frame(&mut reader),
            Ok(Some(ToWorker::Run { job_id: 1, .. }))
        ));
        assert!(matches!(
            buffered_frame(&mut reader, is_run),
            Some(ToWorker::Run { job_id: 2, .. })
        ));
        // A frame it does not want stays for the next read.
        assert!(buffered_frame(&mut reader, is_run).is_none());
        assert!(matches!(read_frame(&mut reader), Ok(Some(ToWorker::Stop))));
        // A frame not all read yet is not taken.
        assert!(buffered_frame(&mut reader, is_run).is_none());
    }

    #[test]
    fn blocking_read_sees_clean_eof() {
        let mut bytes: &[u8] = &encode(&ToWorker::Stop);
        assert!(matches!(
            read_frame::<ToWorker>(&mut bytes).unwrap(),
            Some(ToWorker::Stop)
        ));
        assert!(read_frame::<ToWorker>(&mut bytes).unwrap().is_none());
    }

    /// Found by the `frame_roundtrip` fuzz target: serde_json's default float parsing is
    /// best-effort and may land one ULP off, so a float a worker sent (a pool statistic; or
    /// an argument a client sent, which a worker decodes) reached the master changed.
    #[test]
    fn floats_cross_the_channel_exactly() {
        let digits = format!("{}0", "8".repeat(70));
        let mut values: Vec<f64> = vec![digits.parse().unwrap()];
        let mut rng = fastrand::Rng::with_seed(16);
        values.extend(
            (0..2000)
                .map(|_| f64::from_bits(rng.u64(..)))
                .filter(|f| f.is_finite()),
        );
        for value in values {
            let frame = encode(&FromWorker::Heartbeat {
                rss_bytes: 1,
                pools: Value::from(value),
            });
            let mut buffer = FrameBuffer::default();
            buffer.extend(&frame);
            match buffer.next_frame::<FromWorker>().unwrap().unwrap() {
                FromWorker::Heartbeat { pools, .. } => {
                    assert_eq!(pools.as_f64(), Some(value), "{value:e}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
