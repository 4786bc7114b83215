//! Hand-run check of `swarmlb::takeover` on a real Docker swarm node (needs root):
//!   takeover_check ensure VNI SUBNET/PREFIX MTU ENDPOINT [TASK...]   (again on each stdin line)
//!   takeover_check connect ENDPOINT TASK:PORT     (TCP from ENDPOINT, prints the first bytes)
//!   takeover_check release
//! `takeover_fake_docker.sh` runs it against a fake Docker layout in namespaces.
//! e.g. `takeover_check ensure 4096 198.19.128.0/24 1450 198.19.128.2 198.19.128.4 198.19.128.5`.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
};

use anyhow::{Context, Result, bail};
use swarmlb::model::{Network, Subnet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ip = |s: &String| s.parse::<Ipv4Addr>().with_context(|| format!("bad address {s}"));
    match args.first().map(String::as_str) {
        Some("ensure") if args.len() >= 5 => {
            let (addr, prefix) = args[2].split_once('/').context("SUBNET/PREFIX")?;
            let network = Network {
                name: "check".into(),
                vni: args[1].parse()?,
                subnet: Subnet { addr: addr.parse()?, prefix: prefix.parse()? },
                mtu: args[3].parse()?,
                endpoints: Vec::new(),
            };
            let tasks = args[5..].iter().map(ip).collect::<Result<BTreeSet<_>>>()?;
            let mut takeover = swarmlb::takeover::Takeover::default();
            loop {
                let t = std::time::Instant::now();
                match takeover.ensure(&network, ip(&args[4])?, &tasks).await {
                    Ok((attached, run)) => println!("{attached:?} {run:?} in {:?}", t.elapsed()),
                    Err(e) => println!("failed in {:?}: {e:#}", t.elapsed()),
                }
                if std::io::stdin().read_line(&mut String::new())? == 0 {
                    break;
                }
            }
        }
        Some("connect") if args.len() == 3 => {
            let to: SocketAddrV4 = args[2].parse()?;
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(ip(&args[1])?.into(), 0))?;
            let mut s = tokio::time::timeout(std::time::Duration::from_secs(3), sock.connect(to.into()))
                .await
                .context("connect timed out")??;
            s.write_all(format!("GET / HTTP/1.0\r\nHost: {to}\r\n\r\n").as_bytes()).await?;
            let mut buf = Vec::new();
            tokio::time::timeout(std::time::Duration::from_secs(3), s.read_to_end(&mut buf))
                .await
                .context("read timed out")??;
            println!("{to}: {:?}", String::from_utf8_lossy(&buf[..buf.len().min(120)]));
        }
        Some("release") => swarmlb::takeover::release_all().await?,
        _ => bail!("usage: see the top of examples/takeover_check.rs"),
    }
    Ok(())
}
