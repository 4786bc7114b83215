//! A test backend that names itself: TCP answers HTTP requests with its name, and echoes lines
//! (prefixed with its name) on connections that start with `ECHO`; UDP answers each datagram with
//! its name followed by the datagram. The name comes from `--name` or `SLB_TASK_NAME`.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
};

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
    // Drain the request headers, then answer.
    while line.trim_end() != "" {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
    }
    let body = format!("{name}\n");
    let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    writer.write_all(head.as_bytes())?;
    writer.write_all(body.as_bytes())
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
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
            reply.extend_from_slice(&buf[..len]);
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
