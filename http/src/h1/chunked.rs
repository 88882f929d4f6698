//! The chunked transfer coding (RFC 9112 section 7.1) of the fast path: a decoder for an upstream's chunked
//! response body, with the rules of hyper's (CRLF only, extensions ignored, trailers read and dropped, bounded),
//! and the encoder of the chunks relayed to the client. The upstream's framing is never passed through as is:
//! every chunk is decoded and written again, so a client only ever sees framing this proxy wrote.

/// Most bytes of chunk extensions in one body (hyper's limit).
const MAX_EXTENSIONS: usize = 16 * 1024;
/// Most bytes of trailer fields.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body: {0}")]
pub struct ChunkError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first digit of a chunk size.
    SizeStart,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Decodes one chunked body, fed in pieces.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    size: u64,
    extensions: usize,
    trailers: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self { state: State::SizeStart, size: 0, extensions: 0, trailers: 0 }
    }

    /// Whether the last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `input` as belongs to the body, handing each piece of chunk data to `data`; returns
    /// how many bytes were consumed (all of `input`, unless the body ended within it).
    pub fn decode(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if self.state == State::Data {
                let n = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                data(&input[i..i + n]);
                i += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::SizeStart | State::Size, _) if b.is_ascii_hexdigit() => {
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(digit))
                        .ok_or(ChunkError("chunk size overflows"))?;
                    State::Size
                }
                (State::SizeStart, _) => return Err(ChunkError("chunk size expected")),
                (State::Size | State::SizeLws, b' ' | b'\t') => State::SizeLws,
                (State::Size | State::SizeLws, b';') => State::Extension,
                (State::Size | State::SizeLws | State::Extension, b'\r') => State::SizeLf,
                (State::Size | State::SizeLws, _) => return Err(ChunkError("invalid chunk size")),
                (State::Extension, b'\n') => return Err(ChunkError("newline in a chunk extension")),
                (State::Extension, _) => {
                    self.extensions += 1;
                    if self.extensions > MAX_EXTENSIONS {
                        return Err(ChunkError("chunk extensions too long"));
                    }
                    State::Extension
                }
                (State::SizeLf, b'\n') if self.size == 0 => State::TrailerStart,
                (State::SizeLf, b'\n') => State::Data,
                (State::SizeLf, _) => return Err(ChunkError("chunk size line not ended by CRLF")),
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataLf, b'\n') => State::SizeStart,
                (State::DataCr | State::DataLf, _) => return Err(ChunkError("chunk data not ended by CRLF")),
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerStart | State::Trailer, b'\n') => {
                    return Err(ChunkError("bare newline in trailers"));
                }
                (State::Trailer, b'\r') => State::TrailerLf,
                (State::TrailerStart | State::Trailer, _) => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(ChunkError("trailers too long"));
                    }
                    State::Trailer
                }
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (State::TrailerLf, _) => return Err(ChunkError("trailer line not ended by CRLF")),
                (State::EndLf, b'\n') => State::Done,
                (State::EndLf, _) => return Err(ChunkError("last chunk not ended by CRLF")),
                (State::Data | State::Done, _) => unreachable!("handled above"),
            };
        }
        Ok(i)
    }
}

/// The last chunk, without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends `data` as one chunk to `out` (nothing for empty data, which would end the body).
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    write_chunk_size(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the size line of a chunk of `len` bytes.
pub fn write_chunk_size(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool, usize), ChunkError> {
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        let mut left = 0;
        for piece in pieces {
            let used = decoder.decode(piece, |d| out.extend_from_slice(d))?;
            left += piece.len() - used;
        }
        Ok((out, decoder.is_done(), left))
    }

    #[test]
    fn decodes_in_any_pieces() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let whole = decode_all(&[body]).unwrap();
        assert_eq!(whole, (b"hello world".to_vec(), true, 4));
        for split in 0..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(decode_all(&[a, b]).unwrap(), whole, "split at {split}");
        }
        assert_eq!(decode_all(&[b"A \r\n0123456789\r\n0\r\n\r\n"]).unwrap().0, b"0123456789");
    }

    #[test]
    fn refuses_what_hyper_refuses() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5;a\nb\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\nx\n",
            b"0\r\n\rx",
        ] {
            assert!(decode_all(&[bad]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn encodes_chunks() {
        let mut out = Vec::new();
        encode_chunk(&mut out, b"");
        encode_chunk(&mut out, &[b'x'; 26]);
        out.extend_from_slice(LAST_CHUNK);
        let (data, done, _) = decode_all(&[&out]).unwrap();
        assert!(done);
        assert_eq!(data.len(), 26);
        assert!(out.starts_with(b"1a\r\n"));
    }
}
