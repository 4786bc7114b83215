//! A test backend that names itself: TCP answers HTTP requests with its name (`GET /peer`: its
//! name and the peer address it sees, `name ADDR:PORT`), and echoes lines (prefixed with its
//! name) on connections that start with `ECHO`; UDP answers each datagram with its name followed
//! by the datagram (a datagram `PEER`: by the peer address it sees). The name comes from
//! `--name` or `SLB_TASK_NAME`.
//!
//! `slb-testsrv client MODE ADDR:PORT COUNT` is the matching client, for tests that need one in a
//! container or a cgroup of their own (`ADDR` may be a name, resolved as the system resolves
//! it). It prints one line per answer: `<answer> peer=<what the socket reports as its peer>`,
//! or `error: <why>`; every call is bounded by a 3 s timeout. Modes:
//! - `tcp`: COUNT HTTP requests, each on a new connection (`peer` is `getpeername`);
//! - `echo`: one connection, COUNT echoed lines;
//! - `udp`: COUNT datagrams from one connected socket (`peer` is `recv_from`'s source);
//! - `udp-unconnected`: the same from an unconnected socket (`send_to` each time).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket},
    thread,
    time::Duration,
};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

fn resolve(target: &str) -> std::io::Result<SocketAddr> {
    target
        .to_socket_addrs()?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| std::io::Error::other(format!("{target}: no IPv4 address")))
}

fn http_get(to: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&to, CLIENT_TIMEOUT)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let peer = stream.peer_addr()?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    Ok(format!("{body} peer={peer}"))
}

fn client(mode: &str, to: SocketAddr, count: usize) -> std::io::Result<()> {
    let report = |line: std::io::Result<String>| match line {
        Ok(line) => println!("{line}"),
        Err(e) => println!("error: {e}"),
    };
    match mode {
        "tcp" => (0..count).for_each(|_| report(http_get(to))),
        "echo" => {
            let stream = TcpStream::connect_timeout(&to, CLIENT_TIMEOUT)?;
            stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
            let peer = stream.peer_addr()?;
            let mut reader = BufReader::new(stream.try_clone()?);
            let mut writer = stream;
            writer.write_all(b"ECHO\n")?;
            let mut line = String::new();
            reader.read_line(&mut line)?;
            for i in 0..count {
                let exchange = (|| {
                    writer.write_all(format!("{i}\n").as_bytes())?;
                    line.clear();
                    reader.read_line(&mut line)?;
                    let name = line.split_whitespace().next().unwrap_or_default();
                    Ok(format!("{name} peer={peer}"))
                })();
                report(exchange);
            }
        }
        "udp" | "udp-unconnected" => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(CLIENT_TIMEOUT))?;
            let connected = mode == "udp";
            if connected {
                socket.connect(to)?;
            }
            let mut buf = [0u8; 2048];
            for i in 0..count {
                let exchange = (|| {
                    let datagram = format!("{i}");
                    if connected {
                        socket.send(datagram.as_bytes())?
                    } else {
                        socket.send_to(datagram.as_bytes(), to)?
                    };
                    let (len, from) = socket.recv_from(&mut buf)?;
                    let answer = String::from_utf8_lossy(&buf[..len]);
                    let name = answer.split_whitespace().next().unwrap_or_default().to_owned();
                    Ok(format!("{name} peer={from}"))
                })();
                report(exchange);
            }
        }
        other => {
            return Err(std::io::Error::other(format!(
                "unknown client mode {other:?} (tcp, echo, udp, udp-unconnected)"
            )));
        }
    }
    Ok(())
}

fn serve_tcp(stream: TcpStream, name: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.starts_with("ECHO") {
        writer.write_all(format!("{name}\n").as_bytes())?;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            writer.write_all(format!("{name} {line}").as_bytes())?;
        }
    }
    let body =
        if line.starts_with("GET /peer ") { format!("{name} {}\n", writer.peer_addr()?) } else { format!("{name}\n") };
    // Drain the request headers, then answer.
    while line.trim_end() != "" {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
    }
    let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    writer.write_all(head.as_bytes())?;
    writer.write_all(body.as_bytes())
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("client") {
        let usage = || std::io::Error::other("usage: slb-testsrv client tcp|echo|udp|udp-unconnected ADDR:PORT COUNT");
        let (Some(mode), Some(target), Some(count)) = (args.get(2), args.get(3), args.get(4)) else {
            return Err(usage());
        };
        let count = count.parse().map_err(|_| usage())?;
        return client(mode, resolve(target)?, count);
    }
    let arg = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    // Swarm expands templates in environment variables, not in arguments.
    let name = arg("--name").or_else(|| std::env::var("SLB_TASK_NAME").ok()).expect("--name NAME or SLB_TASK_NAME");
    let tcp_port = arg("--tcp").unwrap_or_else(|| "8080".into());
    let udp_port = arg("--udp").unwrap_or_else(|| "5353".into());

    let udp = UdpSocket::bind(format!("0.0.0.0:{udp_port}"))?;
    let udp_name = name.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((len, peer)) = udp.recv_from(&mut buf) {
            let mut reply = format!("{udp_name} ").into_bytes();
            if &buf[..len] == b"PEER" {
                reply.extend_from_slice(peer.to_string().as_bytes());
            } else {
                reply.extend_from_slice(&buf[..len]);
            }
            let _ = udp.send_to(&reply, peer);
        }
    });

    let listener = TcpListener::bind(format!("0.0.0.0:{tcp_port}"))?;
    for stream in listener.incoming().flatten() {
        let name = name.clone();
        thread::spawn(move || serve_tcp(stream, &name));
    }
    Ok(())
}
