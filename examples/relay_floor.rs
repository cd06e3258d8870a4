//! The floor of a tokio relay, for `bench/instructions.sh`'s comparison with `PgBouncer`: one
//! current-thread runtime, one task per client, one upstream connection per client, bytes
//! copied both ways with `copy_bidirectional`. It parses nothing, pools nothing and keeps no
//! state, so what it costs per transaction is what the runtime's readiness, wake-ups and task
//! polls cost before a pooler does any work of its own.
//! Usage: `relay_floor LISTEN_ADDR UPSTREAM_ADDR`.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: relay_floor LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().map_err(std::io::Error::other)?;
    let upstream: SocketAddr = upstream.parse().map_err(std::io::Error::other)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let stop = tokio::signal::ctrl_c();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (client, _) = accepted?;
                    tokio::spawn(relay(client, upstream));
                }
                _ = &mut stop => return Ok(()),
            }
        }
    })
}

/// Copies bytes between one client and its own upstream connection until either side closes.
async fn relay(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
