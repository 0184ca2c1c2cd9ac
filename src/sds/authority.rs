//! Lets gRPC clients that name a Unix socket in `:authority` reach the socket's services.
//!
//! gRPC's C core (Python, Ruby, C++, PHP…) sends the socket's percent-encoded path as the
//! `:authority` of every request on a `unix:` target. That is not a valid URI authority, and the
//! HTTP/2 server resets every such stream with PROTOCOL_ERROR before any service sees it. The
//! socket itself says who is asking, so the authority means nothing here: this reads what the
//! client sends, and when the first request's authority is one the server would refuse, the
//! connection's header blocks are decoded and sent on with `:authority: localhost` instead.
//! A client whose first authority is valid (Envoy, grpc-go, tonic) is passed through untouched
//! from then on, holding nothing.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame a server accepts before it says otherwise (RFC 9113, SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME: usize = 16_384;
/// A client's header block is never larger than this; more is refused.
const MAX_BLOCK: usize = 64 * 1024;

/// How the connection's requests are passed on.
enum Mode {
    /// Not decided before the first header block.
    Watching,
    /// Untouched.
    Through,
    /// Header blocks decoded and encoded again, the authority replaced when invalid.
    Rewriting(Box<hpack::Decoder<'static>>),
}

/// A header block being gathered: its stream, whether it ends the stream, and its fragments,
/// with the frames' bytes as they came.
struct Block {
    stream: u32,
    end_stream: bool,
    fragments: Vec<u8>,
    original: Vec<u8>,
}

/// A client connection, with what it sends read through the rewriting above.
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    preface_seen: bool,
    /// Bytes read and not yet parsed.
    input: Vec<u8>,
    /// Bytes ready for the server.
    output: Vec<u8>,
    block: Option<Block>,
}

impl<S> AuthorityFix<S> {
    /// `inner`, read through the fix.
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            mode: Mode::Watching,
            preface_seen: false,
            input: Vec::new(),
            output: Vec::new(),
            block: None,
        }
    }

    /// Moves what can be decided from `input` to `output`.
    fn process(&mut self) -> io::Result<()> {
        if !self.preface_seen {
            if self.input.len() < PREFACE.len() {
                if !PREFACE.starts_with(&self.input) {
                    self.pass_through();
                }
                return Ok(());
            }
            if !self.input.starts_with(PREFACE) {
                // Not HTTP/2 with prior knowledge: the server will say so.
                self.pass_through();
                return Ok(());
            }
            self.output.extend(self.input.drain(..PREFACE.len()));
            self.preface_seen = true;
        }
        while matches!(self.mode, Mode::Watching | Mode::Rewriting(_)) {
            if self.input.len() < FRAME_HEADER {
                return Ok(());
            }
            let len = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]) as usize;
            if self.input.len() < FRAME_HEADER + len {
                return Ok(());
            }
            let frame: Vec<u8> = self.input.drain(..FRAME_HEADER + len).collect();
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            let payload = &frame[FRAME_HEADER..];
            match (kind, self.block.as_mut()) {
                (HEADERS, None) => {
                    let fragment = header_fragment(payload, flags).ok_or_else(malformed)?;
                    self.block = Some(Block {
                        stream,
                        end_stream: flags & END_STREAM != 0,
                        fragments: fragment.to_vec(),
                        original: frame.clone(),
                    });
                }
                (CONTINUATION, Some(block)) if block.stream == stream => {
                    block.fragments.extend_from_slice(payload);
                    block.original.extend_from_slice(&frame);
                    if block.fragments.len() > MAX_BLOCK {
                        return Err(malformed());
                    }
                }
                // Anything else inside a header block is the client's error; the server says so.
                (_, Some(_)) => {
                    self.pass_through_with(frame);
                    return Ok(());
                }
                (_, None) => {
                    self.output.extend_from_slice(&frame);
                    continue;
                }
            }
            if flags & END_HEADERS != 0 {
                let block = self.block.take().expect("gathered above");
                self.finish(block)?;
            }
        }
        Ok(())
    }

    /// Sends a whole header block on, deciding the connection's mode on its first one.
    fn finish(&mut self, block: Block) -> io::Result<()> {
        let (mut decoder, watching) = match std::mem::replace(&mut self.mode, Mode::Through) {
            Mode::Rewriting(decoder) => (decoder, false),
            Mode::Watching => (Box::new(hpack::Decoder::new()), true),
            Mode::Through => unreachable!("blocks are gathered only while watching or rewriting"),
        };
        let mut headers = match decoder.decode(&block.fragments) {
            Ok(headers) => headers,
            // Undecodable at first: the server's own decoder reports it.
            Err(_) if watching => {
                self.pass_through_with(block.original);
                return Ok(());
            }
            Err(_) => return Err(malformed()),
        };
        let bad = headers
            .iter()
            .position(|(name, value)| name == b":authority" && !valid_authority(value));
        match bad {
            None if watching => {
                self.pass_through_with(block.original);
                return Ok(());
            }
            None => {}
            Some(i) => headers[i].1 = b"localhost".to_vec(),
        }
        let encoded = encode_literally(&headers);
        self.write_block(block.stream, block.end_stream, &encoded);
        self.mode = Mode::Rewriting(decoder);
        Ok(())
    }

    /// Sends `encoded` as a header block: a HEADERS frame and as many CONTINUATION frames as
    /// its size needs.
    fn write_block(&mut self, stream: u32, end_stream: bool, encoded: &[u8]) {
        let (mut rest, mut first) = (encoded, true);
        loop {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            let last = tail.is_empty();
            let kind = if first { HEADERS } else { CONTINUATION };
            let mut flags = 0;
            if first && end_stream {
                flags |= END_STREAM;
            }
            if last {
                flags |= END_HEADERS;
            }
            let len = (chunk.len() as u32).to_be_bytes();
            self.output
                .extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
            self.output.extend_from_slice(&stream.to_be_bytes());
            self.output.extend_from_slice(chunk);
            if last {
                return;
            }
            (rest, first) = (tail, false);
        }
    }

    /// From now on everything goes through untouched, starting with what is held.
    fn pass_through(&mut self) {
        self.output.append(&mut self.input);
        self.mode = Mode::Through;
        self.input = Vec::new();
    }

    fn pass_through_with(&mut self, held: Vec<u8>) {
        self.output.extend_from_slice(&held);
        self.pass_through();
    }
}

/// The header block fragment of a HEADERS frame's payload, without padding and priority.
fn header_fragment(payload: &[u8], flags: u8) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = usize::from(*p.first()?);
        p = &p[1..];
    }
    if flags & PRIORITY != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

/// Whether the HTTP/2 server takes `value` as an authority.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Every field as a literal without indexing and with a new name: the server's decoding table
/// is never touched, so it stays in step whatever the client's does.
fn encode_literally(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        for s in [name, value] {
            integer(&mut out, s.len());
            out.extend_from_slice(s);
        }
    }
    out
}

/// An HPACK integer with a 7-bit prefix and the Huffman bit clear.
fn integer(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

fn malformed() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "a malformed HTTP/2 header block",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.drain(..n);
                if this.output.is_empty() && matches!(this.mode, Mode::Through) {
                    this.output = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::Through) {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The client closed: what is held goes as it is, and the server sees the end.
                this.pass_through();
                if this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.input.extend_from_slice(read.filled());
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec(),
            ),
            (b":authority".to_vec(), authority.to_vec()),
            (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
        ]
    }

    /// What the server reads when a client sends `bytes`, in pieces of `piece` bytes.
    fn through(bytes: &[u8], piece: usize) -> Vec<u8> {
        let mut fix = AuthorityFix::new(());
        for chunk in bytes.chunks(piece) {
            if matches!(fix.mode, Mode::Through) {
                fix.output.extend_from_slice(chunk);
            } else {
                fix.input.extend_from_slice(chunk);
                fix.process().unwrap();
            }
        }
        fix.output
    }

    /// The header blocks of the HEADERS frames in `bytes` (after the preface), decoded.
    fn header_blocks(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = hpack::Decoder::new();
        let mut rest = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while rest.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (frame, tail) = rest.split_at(FRAME_HEADER + len);
            if frame[3] == HEADERS {
                let fragment = header_fragment(&frame[FRAME_HEADER..], frame[4]).unwrap();
                out.push(decoder.decode(fragment).unwrap());
            }
            rest = tail;
        }
        out
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_on_every_request_of_the_connection() {
        let mut encoder = hpack::Encoder::new();
        let path = b"tmp%2Fsds%2Fx.sock";
        let first = encoder.encode(request(path).iter().map(|(n, v)| (&n[..], &v[..])));
        // The second request leans on the client's dynamic table, as real clients' do.
        let second = encoder.encode(request(path).iter().map(|(n, v)| (&n[..], &v[..])));
        let mut sent = PREFACE.to_vec();
        sent.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        sent.extend(frame(
            HEADERS,
            END_HEADERS | PADDED,
            1,
            &[[2].as_slice(), &first, &[0, 0]].concat(),
        ));
        sent.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
        let (a, b) = second.split_at(second.len() / 2);
        sent.extend(frame(HEADERS, END_STREAM, 3, a));
        sent.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        for piece in [1, 7, sent.len()] {
            let read = through(&sent, piece);
            let blocks = header_blocks(&read);
            assert_eq!(blocks.len(), 2, "piece {piece}");
            for block in &blocks {
                assert_eq!(block, &request(b"localhost"), "piece {piece}");
            }
            assert!(read
                .windows(9)
                .any(|w| w == &frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")[..9]));
        }
    }

    #[test]
    fn a_valid_authority_passes_untouched_and_the_connection_is_left_alone() {
        let mut encoder = hpack::Encoder::new();
        let block = encoder.encode(request(b"localhost").iter().map(|(n, v)| (&n[..], &v[..])));
        let mut sent = PREFACE.to_vec();
        sent.extend(frame(HEADERS, END_HEADERS, 1, &block));
        sent.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        for piece in [1, 5, sent.len()] {
            assert_eq!(through(&sent, piece), sent, "piece {piece}");
        }
        // Not HTTP/2 at all: untouched too, for the server to refuse.
        assert_eq!(
            through(b"GET / HTTP/1.1\r\n\r\n", 3),
            b"GET / HTTP/1.1\r\n\r\n"
        );
    }

    #[test]
    fn literal_encoding_reads_back_and_splits_into_frames() {
        let big = vec![b'x'; 40_000];
        let headers = vec![
            (b"n".to_vec(), big.clone()),
            (b":path".to_vec(), b"/".to_vec()),
        ];
        let encoded = encode_literally(&headers);
        assert_eq!(hpack::Decoder::new().decode(&encoded).unwrap(), headers);
        let mut fix = AuthorityFix::new(());
        fix.write_block(5, true, &encoded);
        let out = fix.output;
        assert_eq!(out[3], HEADERS);
        assert_eq!(out[4], END_STREAM, "not the last frame");
        let frames = encoded.len().div_ceil(MAX_FRAME);
        assert_eq!(out.len(), encoded.len() + frames * FRAME_HEADER);
        let mut empty = AuthorityFix::new(());
        empty.write_block(1, false, &[]);
        assert_eq!(empty.output, frame(HEADERS, END_HEADERS, 1, &[]));
    }

    #[test]
    fn padding_and_priority_are_taken_off_and_bad_lengths_refused() {
        assert_eq!(header_fragment(&[1, 9, 0], PADDED), Some(&[9][..]));
        assert_eq!(
            header_fragment(&[0, 0, 0, 0, 0, 9], PRIORITY),
            Some(&[9][..])
        );
        assert_eq!(header_fragment(&[5, 9], PADDED), None);
        assert_eq!(header_fragment(&[0, 0], PRIORITY), None);
    }
}
