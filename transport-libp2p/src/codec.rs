//! The wire framing of frames, on the frame streams and in the control request-response
//! protocol: a big-endian `u32` length, then that many bytes. The reader refuses a length above
//! its limit before reading the body, and allocates at most 64 KiB ahead of the bytes that
//! actually arrived, so a peer can never make it allocate more than the limit (nor the limit
//! itself by announcing a large frame and sending nothing).

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

/// A frame up to this long is read into a buffer allocated at once; a longer one into a buffer
/// that grows as its bytes arrive.
const PREALLOCATED_BYTES_MAX: usize = 64 * 1024;

/// Length-prefixed byte frames with separate limits for requests and responses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameCodec {
    request_max_bytes: usize,
    response_max_bytes: usize,
}

impl FrameCodec {
    pub(crate) fn new(request_max_bytes: usize, response_max_bytes: usize) -> Self {
        assert!(request_max_bytes <= u32::MAX as usize);
        assert!(response_max_bytes <= u32::MAX as usize);
        Self {
            request_max_bytes,
            response_max_bytes,
        }
    }
}

/// The error a reader or writer returns for a frame above the limit.
#[derive(Debug, thiserror::Error)]
#[error("frame of {len} bytes exceeds the limit of {max} bytes")]
pub(crate) struct FrameTooLarge {
    pub(crate) len: u64,
    pub(crate) max: usize,
}

pub(crate) async fn read_frame<T>(io: &mut T, max_bytes: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut len_bytes = [0u8; 4];
    io.read_exact(&mut len_bytes).await?;
    let len = u64::from(u32::from_be_bytes(len_bytes));
    if len > max_bytes as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            FrameTooLarge {
                len,
                max: max_bytes,
            },
        ));
    }
    if len <= PREALLOCATED_BYTES_MAX as u64 {
        let mut frame = vec![0; len as usize];
        io.read_exact(&mut frame).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(e.kind(), format!("frame truncated: fewer than {len} bytes"))
            } else {
                e
            }
        })?;
        return Ok(frame);
    }
    let mut frame = Vec::with_capacity(PREALLOCATED_BYTES_MAX);
    let read = io.take(len).read_to_end(&mut frame).await?;
    if read as u64 != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame truncated: {read} of {len} bytes"),
        ));
    }
    Ok(frame)
}

pub(crate) async fn write_frame<T>(io: &mut T, frame: &[u8], max_bytes: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    if frame.len() > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            FrameTooLarge {
                len: frame.len() as u64,
                max: max_bytes,
            },
        ));
    }
    let len = u32::try_from(frame.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame longer than u32"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(frame).await?;
    io.flush().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.request_max_bytes).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.response_max_bytes).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &request, self.request_max_bytes).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &response, self.response_max_bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    fn encoded(frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        block_on(write_frame(&mut Cursor::new(&mut out), frame, 1024)).expect("write");
        out
    }

    #[test]
    fn frame_round_trips() {
        for frame in [&b""[..], b"x", &[7u8; 1024]] {
            let bytes = encoded(frame);
            assert_eq!(bytes.len(), 4 + frame.len());
            let back = block_on(read_frame(&mut Cursor::new(bytes), 1024)).expect("read");
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn frames_above_the_preallocation_round_trip_and_truncations_are_errors() {
        let frame = vec![9u8; PREALLOCATED_BYTES_MAX + 5];
        let mut bytes = Vec::new();
        block_on(write_frame(&mut Cursor::new(&mut bytes), &frame, 1 << 20)).expect("write");
        let back = block_on(read_frame(&mut Cursor::new(bytes.clone()), 1 << 20)).expect("read");
        assert_eq!(back, frame);
        bytes.truncate(bytes.len() - 1);
        let err = block_on(read_frame(&mut Cursor::new(bytes), 1 << 20)).expect_err("short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let err = block_on(read_frame(&mut Cursor::new(bytes), 1024)).expect_err("too large");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn oversized_write_is_refused() {
        let mut out = Vec::new();
        let err =
            block_on(write_frame(&mut Cursor::new(&mut out), &[0; 11], 10)).expect_err("too large");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(out.is_empty(), "nothing written");
    }

    #[test]
    fn truncated_frames_are_errors() {
        let mut bytes = 10u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let err = block_on(read_frame(&mut Cursor::new(bytes), 1024)).expect_err("short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let err = block_on(read_frame(&mut Cursor::new(vec![0, 0]), 1024)).expect_err("short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
