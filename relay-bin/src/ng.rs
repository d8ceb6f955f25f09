//! UDP and TCP transports for the rtpengine ng protocol.

use std::net::SocketAddr;
use std::sync::Arc;

use relay_core::ng::bencode::{decode_prefix, BencodeError};
use relay_core::ng::NgEngine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// Largest message accepted (UDP datagram or one TCP message).
const MAX_MESSAGE: usize = 1 << 20;

/// Binds UDP and TCP on `listen` (same port when the port is fixed) and
/// serves them; returns the bound addresses.
pub async fn start(listen: SocketAddr, engine: Arc<NgEngine>) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let udp = Arc::new(UdpSocket::bind(listen).await?);
    let udp_addr = udp.local_addr()?;
    let tcp = TcpListener::bind(if listen.port() == 0 { listen } else { udp_addr }).await?;
    let tcp_addr = tcp.local_addr()?;
    let e = engine.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = udp.recv_from(&mut buf).await else { continue };
            let msg = buf[..n].to_vec();
            let (udp, e) = (udp.clone(), e.clone());
            tokio::spawn(async move {
                let reply = e.handle_message(&msg).await;
                let _ = udp.send_to(&reply, from).await;
            });
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else { continue };
            tokio::spawn(serve_tcp(stream, engine.clone()));
        }
    });
    Ok((udp_addr, tcp_addr))
}

/// One TCP connection: messages are `cookie SP bencode`, back to back
/// (bencode delimits itself).
async fn serve_tcp(mut stream: tokio::net::TcpStream, engine: Arc<NgEngine>) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16384];
    loop {
        // Take every complete message in the buffer.
        loop {
            let start = buf.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(buf.len());
            buf.drain(..start);
            let Some(space) = buf.iter().position(|b| *b == b' ') else { break };
            match decode_prefix(&buf[space + 1..]) {
                Ok((_, used)) => {
                    let end = space + 1 + used;
                    let reply = engine.handle_message(&buf[..end]).await;
                    buf.drain(..end);
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
                Err(BencodeError::Truncated) => break,
                Err(_) => {
                    // Not bencode: answer once through the engine (error reply) and close.
                    let reply = engine.handle_message(&buf).await;
                    let _ = stream.write_all(&reply).await;
                    return;
                }
            }
        }
        if buf.len() > MAX_MESSAGE {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
