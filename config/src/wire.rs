//! Versioned binary wire formats for stats (docs/architecture.md, "Stats"); `docs/wire-formats.md` describes them.
//!
//! * A **pod stat** is what `GET :9090/stats` on a queue-proxy returns: one second of load, at most
//!   [`MAX_STAT_LEN`] bytes, content type [`STAT_CONTENT_TYPE`].
//! * An **ingest frame** is one `{version, namespace, name, stat}` record on an activator's streaming
//!   `POST /v1/stats`, preceded by its length as a big-endian `u32`, at most [`MAX_FRAME_LEN`] bytes.
//!
//! Both begin with a version byte. Decoders accept [`ACCEPTED_VERSIONS`]: the current version and the previous
//! one, so that a rolling upgrade (autoscaler first, then the senders) never drops stats. Version 2 appended the
//! average queued requests to version 1's fields. All integers and floats are little-endian
//! except the frame's length prefix. Decoding checks every length before reading, so hostile input yields an
//! error, never a panic or an allocation larger than the limit.

use std::ops::RangeInclusive;

/// Version written by this build.
pub const CURRENT_VERSION: u8 = 2;
/// Versions this build decodes: the current one and the one before it.
pub const ACCEPTED_VERSIONS: RangeInclusive<u8> = CURRENT_VERSION - 1..=CURRENT_VERSION;
/// Content type of a pod stat on `GET /stats`.
pub const STAT_CONTENT_TYPE: &str = "application/vnd.ebb.stat";
/// Content type of the ingest stream on `POST /v1/stats`.
pub const INGEST_CONTENT_TYPE: &str = "application/vnd.ebb.stat-stream";
/// Largest encoded pod stat.
pub const MAX_STAT_LEN: usize = 512;
/// Largest ingest frame body (after the length prefix).
pub const MAX_FRAME_LEN: usize = 1024;
/// Longest pod name (a DNS subdomain).
pub const MAX_POD_NAME_LEN: usize = 253;
/// Longest namespace (a DNS label).
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest service (Deployment) name.
pub const MAX_SERVICE_NAME_LEN: usize = 253;

/// One second of load as seen by one queue-proxy (or one activator, for one service).
#[derive(Debug, Clone, PartialEq)]
pub struct PodStat {
    /// Name of the pod that measured it.
    pub pod: String,
    /// Time-weighted average of requests in flight or queued over the period.
    pub average_concurrency: f64,
    /// The part of [`Self::average_concurrency`] that came through the activator.
    pub average_proxied_concurrency: f64,
    /// Requests that arrived during the period.
    pub request_count: f64,
    /// The part of [`Self::request_count`] that came through the activator.
    pub proxied_request_count: f64,
    /// Seconds since the measuring process started.
    pub process_uptime_secs: f64,
    /// End of the period, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The part of [`Self::average_concurrency`] that waited for a slot rather than being served (version 2;
    /// `None` from a version-1 sender, which did not say).
    pub average_queued: Option<f64>,
}

/// One stat for one service on the ingest stream.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestFrame {
    /// The service's namespace.
    pub namespace: String,
    /// The service's (Deployment's) name.
    pub name: String,
    /// The measurement.
    pub stat: PodStat,
}

/// Why bytes could not be decoded (or a value could not be encoded).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// The version byte names a format this build does not read.
    #[error("unsupported stat format version {found}; this build accepts versions {accepted:?}")]
    UnsupportedVersion {
        /// The version found.
        found: u8,
        /// The versions accepted.
        accepted: RangeInclusive<u8>,
    },
    /// The input ended before the format says it should.
    #[error("truncated {what}: needed {needed} more bytes")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// Bytes remain after a complete record.
    #[error("{extra} unexpected bytes after the {what}")]
    TrailingBytes {
        /// What was read.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// A record or field is longer than its limit.
    #[error("{what} is {len} bytes; the limit is {max}")]
    TooLong {
        /// What is too long.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name is empty or not UTF-8.
    #[error("{what} must be non-empty UTF-8")]
    BadName {
        /// Which name.
        what: &'static str,
    },
    /// A measurement is NaN, infinite or negative.
    #[error("{what} must be a finite number >= 0, got {value}")]
    BadNumber {
        /// Which field.
        what: &'static str,
        /// The value found.
        value: f64,
    },
}

impl PodStat {
    /// Encodes the stat in the current version.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(64 + self.pod.len());
        out.push(CURRENT_VERSION);
        self.encode_fields(&mut out)?;
        Ok(out)
    }

    /// Decodes a stat of any accepted version; the whole input must be one stat.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        check_len("stat", bytes.len(), MAX_STAT_LEN)?;
        let mut reader = Reader::new(bytes, "stat");
        let version = check_version(reader.u8()?)?;
        let stat = Self::decode_fields(&mut reader, version)?;
        reader.finish()?;
        Ok(stat)
    }

    fn encode_fields(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        put_name(out, "pod name", &self.pod, MAX_POD_NAME_LEN)?;
        for (what, value) in self.numbers() {
            check_number(what, value)?;
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        let queued = self.average_queued.unwrap_or(0.0);
        check_number("average queued", queued)?;
        out.extend_from_slice(&queued.to_le_bytes());
        Ok(())
    }

    /// Reads the fields after the version byte, as `version` lays them out.
    fn decode_fields(reader: &mut Reader<'_>, version: u8) -> Result<Self, WireError> {
        let pod = reader.name("pod name", MAX_POD_NAME_LEN)?;
        let number =
            |reader: &mut Reader<'_>, what| reader.f64().and_then(|v| check_number(what, v).map(|()| v));
        Ok(Self {
            pod,
            average_concurrency: number(reader, "average concurrency")?,
            average_proxied_concurrency: number(reader, "average proxied concurrency")?,
            request_count: number(reader, "request count")?,
            proxied_request_count: number(reader, "proxied request count")?,
            process_uptime_secs: number(reader, "process uptime")?,
            timestamp_ms: reader.u64()?,
            average_queued: if version >= 2 { Some(number(reader, "average queued")?) } else { None },
        })
    }

    fn numbers(&self) -> [(&'static str, f64); 5] {
        [
            ("average concurrency", self.average_concurrency),
            ("average proxied concurrency", self.average_proxied_concurrency),
            ("request count", self.request_count),
            ("proxied request count", self.proxied_request_count),
            ("process uptime", self.process_uptime_secs),
        ]
    }
}

impl IngestFrame {
    /// Encodes the frame, length prefix included, in the current version.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = vec![0; 4];
        out.push(CURRENT_VERSION);
        put_name(&mut out, "namespace", &self.namespace, MAX_NAMESPACE_LEN)?;
        put_name(&mut out, "service name", &self.name, MAX_SERVICE_NAME_LEN)?;
        self.stat.encode_fields(&mut out)?;
        let body = out.len() - 4;
        check_len("ingest frame", body, MAX_FRAME_LEN)?;
        out[..4].copy_from_slice(&(body as u32).to_be_bytes());
        Ok(out)
    }

    /// Decodes the first frame of a stream buffer. Returns `Ok(None)` while the buffer holds less than a
    /// whole frame, else the frame and how many bytes it used. An error means the stream is corrupt and should
    /// be closed; an oversized length prefix is caught before any of its body is awaited.
    pub fn decode_prefix(buf: &[u8]) -> Result<Option<(Self, usize)>, WireError> {
        let Some(prefix) = buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let body = u32::from_be_bytes(*prefix) as usize;
        check_len("ingest frame", body, MAX_FRAME_LEN)?;
        let Some(bytes) = buf.get(4..4 + body) else {
            return Ok(None);
        };
        let mut reader = Reader::new(bytes, "ingest frame");
        let version = check_version(reader.u8()?)?;
        let namespace = reader.name("namespace", MAX_NAMESPACE_LEN)?;
        let name = reader.name("service name", MAX_SERVICE_NAME_LEN)?;
        let stat = PodStat::decode_fields(&mut reader, version)?;
        reader.finish()?;
        Ok(Some((Self { namespace, name, stat }, 4 + body)))
    }
}

/// The version, if this build reads it.
fn check_version(found: u8) -> Result<u8, WireError> {
    if ACCEPTED_VERSIONS.contains(&found) {
        Ok(found)
    } else {
        Err(WireError::UnsupportedVersion { found, accepted: ACCEPTED_VERSIONS })
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max { Err(WireError::TooLong { what, len, max }) } else { Ok(()) }
}

fn check_number(what: &'static str, value: f64) -> Result<(), WireError> {
    if value.is_finite() && value >= 0.0 { Ok(()) } else { Err(WireError::BadNumber { what, value }) }
}

fn put_name(out: &mut Vec<u8>, what: &'static str, name: &str, max: usize) -> Result<(), WireError> {
    if name.is_empty() {
        return Err(WireError::BadName { what });
    }
    check_len(what, name.len(), max)?;
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// A bounds-checked cursor over one record.
struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { rest: bytes, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::Truncated { what: self.what, needed: n - self.rest.len() });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("took 8 bytes")))
    }

    fn f64(&mut self) -> Result<f64, WireError> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("took 8 bytes")))
    }

    fn name(&mut self, what: &'static str, max: usize) -> Result<String, WireError> {
        let len = self.u8()? as usize;
        check_len(what, len, max)?;
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) if !s.is_empty() => Ok(s.to_owned()),
            _ => Err(WireError::BadName { what }),
        }
    }

    fn finish(self) -> Result<(), WireError> {
        match self.rest.len() {
            0 => Ok(()),
            extra => Err(WireError::TrailingBytes { what: self.what, extra }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stat() -> PodStat {
        PodStat {
            pod: "demo-7d9f-abcde".into(),
            average_concurrency: 10.5,
            average_proxied_concurrency: 2.25,
            request_count: 120.0,
            proxied_request_count: 30.0,
            process_uptime_secs: 61.5,
            timestamp_ms: 1_795_000_000_123,
            average_queued: Some(1.5),
        }
    }

    /// `stat()` as a version-1 sender encoded it: no average queued.
    fn version_1(stat: &PodStat) -> Vec<u8> {
        let mut bytes = stat.encode().unwrap();
        bytes.truncate(bytes.len() - 8);
        bytes[0] = 1;
        bytes
    }

    #[test]
    fn the_previous_version_is_still_read_and_says_nothing_of_queueing() {
        let decoded = PodStat::decode(&version_1(&stat())).unwrap();
        assert_eq!(decoded, PodStat { average_queued: None, ..stat() });
        let frame = IngestFrame { namespace: "ns".into(), name: "svc".into(), stat: stat() };
        let mut bytes = frame.encode().unwrap();
        bytes.truncate(bytes.len() - 8);
        bytes[4] = 1;
        let body = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&body.to_be_bytes());
        let (decoded, used) = IngestFrame::decode_prefix(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(decoded.stat, PodStat { average_queued: None, ..stat() });
        // A version-2 record cut to version 1's length is truncated, not silently read as version 1.
        let mut cut = stat().encode().unwrap();
        cut.truncate(cut.len() - 8);
        assert!(matches!(PodStat::decode(&cut), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn stat_round_trips_and_fits_the_limit() {
        let bytes = stat().encode().unwrap();
        assert_eq!(bytes[0], CURRENT_VERSION);
        assert_eq!(PodStat::decode(&bytes).unwrap(), stat());
        let longest = PodStat { pod: "p".repeat(MAX_POD_NAME_LEN), ..stat() };
        assert!(longest.encode().unwrap().len() <= MAX_STAT_LEN);
    }

    #[test]
    fn frame_round_trips_and_reports_bytes_used() {
        let frame = IngestFrame { namespace: "default".into(), name: "demo".into(), stat: stat() };
        let mut stream = frame.encode().unwrap();
        let one = stream.len();
        stream.extend(frame.encode().unwrap());
        let (decoded, used) = IngestFrame::decode_prefix(&stream).unwrap().unwrap();
        assert_eq!((decoded, used), (frame.clone(), one));
        let (second, _) = IngestFrame::decode_prefix(&stream[used..]).unwrap().unwrap();
        assert_eq!(second, frame);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let frame = IngestFrame { namespace: "ns".into(), name: "svc".into(), stat: stat() };
        let bytes = frame.encode().unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(IngestFrame::decode_prefix(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_prefix_is_rejected_before_the_body_arrives() {
        let prefix = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(IngestFrame::decode_prefix(&prefix), Err(WireError::TooLong { .. })));
    }

    #[test]
    fn unknown_versions_are_rejected_with_the_accepted_range() {
        let mut bytes = stat().encode().unwrap();
        bytes[0] = CURRENT_VERSION + 1;
        let err = PodStat::decode(&bytes).unwrap_err();
        assert_eq!(err.to_string(), "unsupported stat format version 3; this build accepts versions 1..=2");
        bytes[0] = 0;
        assert!(matches!(PodStat::decode(&bytes), Err(WireError::UnsupportedVersion { found: 0, .. })));
    }

    #[test]
    fn bad_values_are_refused_both_ways() {
        let nan = PodStat { average_concurrency: f64::NAN, ..stat() };
        assert!(matches!(nan.encode(), Err(WireError::BadNumber { what: "average concurrency", .. })));
        let negative = PodStat { request_count: -1.0, ..stat() };
        assert!(negative.encode().is_err());
        let empty = PodStat { pod: String::new(), ..stat() };
        assert_eq!(empty.encode(), Err(WireError::BadName { what: "pod name" }));
        let mut bytes = stat().encode().unwrap();
        let at = 2 + stat().pod.len();
        bytes[at..at + 8].copy_from_slice(&f64::INFINITY.to_le_bytes());
        assert!(matches!(PodStat::decode(&bytes), Err(WireError::BadNumber { .. })));
        bytes.push(0);
        assert!(PodStat::decode(&bytes).is_err());
    }

    #[test]
    fn truncated_and_trailing_bytes_are_errors() {
        let bytes = stat().encode().unwrap();
        assert!(matches!(PodStat::decode(&bytes[..bytes.len() - 1]), Err(WireError::Truncated { .. })));
        let mut long = bytes.clone();
        long.push(7);
        assert_eq!(PodStat::decode(&long), Err(WireError::TrailingBytes { what: "stat", extra: 1 }));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = PodStat::decode(&bytes);
            let _ = IngestFrame::decode_prefix(&bytes);
        }

        #[test]
        fn any_valid_stat_round_trips(
            pod in "[a-z0-9-]{1,253}",
            c in 0.0f64..1e9, pc in 0.0f64..1e9, r in 0.0f64..1e9, pr in 0.0f64..1e9, up in 0.0f64..1e9,
            ts in any::<u64>(), q in 0.0f64..1e9,
        ) {
            let stat = PodStat {
                pod, average_concurrency: c, average_proxied_concurrency: pc, request_count: r,
                proxied_request_count: pr, process_uptime_secs: up, timestamp_ms: ts, average_queued: Some(q),
            };
            prop_assert_eq!(PodStat::decode(&stat.encode().unwrap()).unwrap(), stat);
        }
    }
}
