//! Makes a TLS session's reads cancel-safe.
//!
//! The driver races `receive` against timers and drops it when they win, so every read must
//! be cancel-safe. embedded-tls's is not: it reads a record's 5-byte header into a local
//! array, then the body into its record buffer, and if the read is dropped half-way, the
//! header is gone while the body bytes it already read stay counted, so the next read takes
//! body bytes for a header. [`Framed`] sits between the session and the TCP connection and
//! follows the record framing: it hands the session at most one record's bytes per read, and
//! when a read of the session was dropped mid-record (the stream tells it through
//! [`Restart`]), it hands the current record's header bytes out again, so the session re-reads
//! the header and goes on with the body where it stopped. It buffers nothing but the header.

use core::cell::Cell;

use embedded_io_async::{ErrorType, Read, Write};

/// Bytes of a TLS record header: type, version (2), length (2).
const HEADER_LEN: usize = 5;

/// Set by the stream when a session read starts while the previous one never finished.
pub(crate) type Restart = Cell<bool>;

/// A transport that follows TLS record boundaries (see the module docs).
pub(crate) struct Framed<'c, S> {
    inner: S,
    header: [u8; HEADER_LEN],
    /// Header bytes of the current record read so far (0 at a record boundary).
    header_len: usize,
    /// Body bytes of the current record not read yet.
    body_left: usize,
    /// While replaying the header: the next header byte to hand out.
    replay: Option<usize>,
    restart: &'c Restart,
}

impl<'c, S> Framed<'c, S> {
    pub(crate) fn new(inner: S, restart: &'c Restart) -> Self {
        Framed {
            inner,
            header: [0; HEADER_LEN],
            header_len: 0,
            body_left: 0,
            replay: None,
            restart,
        }
    }
}

impl<S: ErrorType> ErrorType for Framed<'_, S> {
    type Error = S::Error;
}

impl<S: Read> Read for Framed<'_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, S::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.restart.take() && self.header_len > 0 {
            self.replay = Some(0);
        }
        if let Some(at) = self.replay {
            let n = buf.len().min(self.header_len - at);
            buf[..n].copy_from_slice(&self.header[at..at + n]);
            self.replay = (at + n < self.header_len).then_some(at + n);
            return Ok(n);
        }
        if self.header_len < HEADER_LEN {
            let want = buf.len().min(HEADER_LEN - self.header_len);
            let at = self.header_len;
            let n = self.inner.read(&mut self.header[at..at + want]).await?;
            buf[..n].copy_from_slice(&self.header[at..at + n]);
            self.header_len += n;
            if self.header_len == HEADER_LEN {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                if self.body_left == 0 {
                    self.header_len = 0;
                }
            }
            return Ok(n);
        }
        let want = buf.len().min(self.body_left);
        let n = self.inner.read(&mut buf[..want]).await?;
        self.body_left -= n;
        if self.body_left == 0 {
            self.header_len = 0;
        }
        Ok(n)
    }
}

impl<S: Write> Write for Framed<'_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, S::Error> {
        self.inner.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), S::Error> {
        self.inner.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::convert::Infallible;
    use embassy_futures::block_on;

    /// Hands out its bytes a few at a time.
    struct Trickle<'b>(&'b [u8]);

    impl ErrorType for Trickle<'_> {
        type Error = Infallible;
    }

    impl Read for Trickle<'_> {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
            let n = buf.len().min(self.0.len()).min(3);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn record(body: &[u8]) -> std::vec::Vec<u8> {
        let mut out = std::vec![23, 3, 3];
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn never_reads_past_a_record_boundary() {
        let mut stream = record(b"0123456789");
        stream.extend(record(b"ab"));
        let restart = Restart::new(false);
        let mut framed = Framed::new(Trickle(&stream), &restart);
        let mut buf = [0u8; 64];
        let mut reads = std::vec::Vec::new();
        loop {
            let n = block_on(framed.read(&mut buf)).unwrap();
            if n == 0 {
                break;
            }
            reads.push(buf[..n].to_vec());
        }
        let lengths: std::vec::Vec<usize> = reads.iter().map(|r| r.len()).collect();
        // Header 3 + 2, body 3 + 3 + 3 + 1 (clamped at the end of the record), then record 2.
        assert_eq!(lengths, [3, 2, 3, 3, 3, 1, 3, 2, 2]);
        assert_eq!(reads.concat(), stream);
    }

    #[test]
    fn after_a_restart_mid_record_the_header_is_handed_out_again() {
        let stream = record(b"0123456789");
        let restart = Restart::new(false);
        let mut framed = Framed::new(Trickle(&stream), &restart);
        let mut buf = [0u8; 64];
        // The session read the header (3 + 2 bytes) and 3 body bytes, then was dropped.
        for _ in 0..3 {
            block_on(framed.read(&mut buf)).unwrap();
        }
        restart.set(true);
        let mut header = [0u8; 5];
        assert_eq!(block_on(framed.read(&mut header)).unwrap(), 5);
        assert_eq!(header, stream[..5]);
        // Then the body goes on where it stopped.
        let n = block_on(framed.read(&mut buf)).unwrap();
        assert_eq!(&buf[..n], b"345");
    }

    #[test]
    fn a_restart_at_a_record_boundary_replays_nothing() {
        let mut stream = record(b"xy");
        stream.extend(record(b"z"));
        let restart = Restart::new(false);
        let mut framed = Framed::new(Trickle(&stream), &restart);
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            block_on(framed.read(&mut buf)).unwrap();
        }
        restart.set(true);
        let n = block_on(framed.read(&mut buf)).unwrap();
        assert_eq!(&buf[..n], &stream[7..10], "the next record's header");
    }
}
