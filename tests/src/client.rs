//! Test clients: HTTP and UDP requests that return the name of the backend that answered, spreads
//! of many of them counted per backend, and a long-lived echo connection. The single requests run
//! on a thread inside the client namespace (`Netns::run`); the spreads enter it themselves.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

pub const TIMEOUT: Duration = Duration::from_secs(3);

/// One HTTP/1.0 request on a new connection; returns the answering backend's name.
pub fn http_get(addr: SocketAddr) -> Result<String> {
    http_get_path(addr, "/")
}

/// One HTTP/1.0 GET of `path`; returns the body, trimmed.
pub fn http_get_path(addr: SocketAddr, path: &str) -> Result<String> {
    Ok(http_get_status(addr, path)?.1)
}

/// One HTTP/1.0 GET of `path`; returns the status code and the body, trimmed.
pub fn http_get_status(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: swarmlb\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).with_context(|| format!("read from {addr}"))?;
    let (head, body) = response.split_once("\r\n\r\n").with_context(|| format!("no HTTP body: {response:?}"))?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    Ok((code.with_context(|| format!("no HTTP status: {head:?}"))?, body.trim().to_string()))
}

/// One UDP request; returns the answering backend's name.
pub fn udp_ask(addr: SocketAddr, payload: &str) -> Result<String> {
    udp_ask_from(0, addr, payload)
}

/// One UDP request from source port `local_port` (0: any); returns the answering backend's name.
pub fn udp_ask_from(local_port: u16, addr: SocketAddr, payload: &str) -> Result<String> {
    udp_query(&UdpSocket::bind(("0.0.0.0", local_port))?, addr, payload)
}

/// One UDP request on `socket`; returns the answering backend's name.
fn udp_query(socket: &UdpSocket, addr: SocketAddr, payload: &str) -> Result<String> {
    let (name, echoed) = udp_exchange(socket, addr, payload)?;
    if echoed != payload {
        bail!("UDP answer echoed {echoed:?}, sent {payload:?}");
    }
    Ok(name)
}

/// Asks `addr` over UDP which peer address it sees: returns the answering backend's name and
/// that address.
pub fn udp_peer_seen(addr: SocketAddr) -> Result<(String, String)> {
    udp_exchange(&UdpSocket::bind("0.0.0.0:0")?, addr, "PEER")
}

/// One datagram to `addr` and its answer, `NAME REST`, from `addr`: (NAME, REST).
fn udp_exchange(socket: &UdpSocket, addr: SocketAddr, payload: &str) -> Result<(String, String)> {
    socket.set_read_timeout(Some(TIMEOUT))?;
    socket.send_to(payload.as_bytes(), addr)?;
    let mut buf = [0u8; 65536];
    let (len, from) = socket.recv_from(&mut buf).with_context(|| format!("no UDP answer from {addr}"))?;
    if from != addr {
        bail!("UDP answer came from {from}, not from the frontend {addr}");
    }
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    let (name, rest) = text.split_once(' ').with_context(|| format!("bad UDP answer {text:?}"))?;
    Ok((name.to_owned(), rest.to_owned()))
}

/// A TCP connection kept open across the test, exchanging lines with one backend.
pub struct EchoConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    pub backend: String,
}

impl EchoConn {
    pub fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut writer = stream.try_clone()?;
        writer.write_all(b"ECHO\n")?;
        let mut reader = BufReader::new(stream);
        let mut backend = String::new();
        reader.read_line(&mut backend)?;
        Ok(EchoConn { reader, writer, backend: backend.trim().to_string() })
    }

    /// Sends a line and checks the same backend echoes it.
    pub fn exchange(&mut self, line: &str) -> Result<()> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        self.reader.read_line(&mut answer).context("echo connection read")?;
        let expected = format!("{} {line}", self.backend);
        if answer.trim_end() != expected {
            bail!("echo connection answered {answer:?}, expected {expected:?}");
        }
        Ok(())
    }
}

/// Opens `count` HTTP connections to `frontend` from inside `ns` and counts answers per backend;
/// the first failed connection fails the whole spread.
pub fn http_spread(ns: &Netns, frontend: SocketAddr, count: usize) -> Result<BTreeMap<String, usize>> {
    ns.run(move || -> Result<BTreeMap<String, usize>> {
        let mut answers = BTreeMap::new();
        for i in 0..count {
            let name = http_get(frontend).with_context(|| format!("connection {i} to {frontend}"))?;
            *answers.entry(name).or_default() += 1;
        }
        Ok(answers)
    })?
}

/// Sends `count` UDP requests to `frontend` from inside `ns` and counts answers per backend.
pub fn udp_spread(ns: &Netns, frontend: SocketAddr, count: usize) -> Result<BTreeMap<String, usize>> {
    ns.run(move || -> Result<BTreeMap<String, usize>> {
        let mut answers = BTreeMap::new();
        // Every request from its own port: the sockets stay open until the spread ends, so the
        // kernel cannot hand a port out twice and each request is a new flow.
        let mut sockets = Vec::with_capacity(count);
        for i in 0..count {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            let name = udp_query(&socket, frontend, &format!("question-{i}"))
                .with_context(|| format!("request {i} to {frontend}"))?;
            *answers.entry(name).or_default() += 1;
            sockets.push(socket);
        }
        Ok(answers)
    })?
}
