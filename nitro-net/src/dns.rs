//! The in-enclave DNS server (127.0.0.1:53, UDP and TCP) for transparent egress, and the
//! parent's side of DNS forwarding.
//!
//! # Decisions
//!
//! For each question ([`decide`], pure; messages parsed and built with `hickory-proto`):
//!
//! | question | answer |
//! |---|---|
//! | not one well-formed `QUERY` question of class `IN` | `FORMERR` / `NOTIMP` |
//! | a name the enclave policy denies on every port | `REFUSED` (or `NXDOMAIN`, see [`DnsConfig::deny_nxdomain`]) |
//! | `A` / `AAAA` for an admitted name | a synthetic address ([`crate::synthetic`]) |
//! | `HTTPS` / `SVCB`, or `AAAA` with IPv6 off | no record (`NOERROR`, empty answer) |
//! | any other type for an admitted name | forwarded to the parent's resolver through the tunnel |
//!
//! The parent decides again: it refuses questions for names its own policy denies, and sends
//! the others to its configured upstream resolver ([`crate::EgressServer::dns_upstream`]).
//! The enclave checks that the parent's answer is a well-formed response to the same question.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::protocol::{MAX_DNS_RESPONSE_BODY, MAX_REQUEST_BODY, Request, Response};
pub use crate::stats::DnsStats;
use crate::stats::{DnsCounters, bump};
use crate::synthetic::SyntheticNames;
use crate::{EgressClient, Error, Policy, ProtocolError, Refusal, RefusalCode, Shutdown};

/// Settings of a [`DnsServer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DnsConfig {
    /// Answer `AAAA` questions with synthetic IPv6 addresses (default on). Off: `AAAA`
    /// questions get an empty answer and applications use IPv4.
    pub ipv6: bool,
    /// Answer denied names with `NXDOMAIN` instead of `REFUSED` (default off). `NXDOMAIN`
    /// makes resolvers give up at once; `REFUSED` makes some try the next server.
    pub deny_nxdomain: bool,
    /// Limit for a forwarded question's answer from the parent (default 5 s).
    pub forward_timeout: Duration,
    /// Forwarded questions in flight at once; beyond it `SERVFAIL` (default 256).
    pub max_forwards: usize,
    /// TCP connections served at once; beyond it new ones wait (default 64).
    pub max_tcp_connections: usize,
    /// A TCP connection with no question for this long is closed (default 10 s).
    pub tcp_idle_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            ipv6: true,
            deny_nxdomain: false,
            forward_timeout: Duration::from_secs(5),
            max_forwards: 256,
            max_tcp_connections: 64,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Why [`decide`] answered the way it did (one counter and one `tracing` event each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DnsDecision {
    /// Synthetic `A`/`AAAA` records.
    Synthetic,
    /// Admitted name, no record of the asked type.
    NoData,
    /// The enclave policy denies the name.
    Denied,
    /// Not one well-formed question.
    Malformed,
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DnsOutcome {
    /// Send this answer.
    Reply {
        /// The answer message (wire format).
        message: Vec<u8>,
        /// Why.
        decision: DnsDecision,
        /// The question's name (normalised when it could be), for logs.
        name: String,
    },
    /// Forward the query to the parent's resolver (the name is admitted).
    Forward(Question),
    /// Send nothing (not even a readable header, or not a query).
    Drop,
}

/// The question of a forwarded query, to check the parent's answer against.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Question {
    /// Query id.
    pub id: u16,
    /// The question as asked.
    pub query: Query,
    /// The normalised name.
    pub name: String,
}

fn reply(query: &Message, code: ResponseCode, answers: Vec<Record>) -> Message {
    let mut m = Message::response(query.metadata.id, query.metadata.op_code);
    m.metadata.response_code = code;
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = query.queries.clone();
    m.answers = answers;
    if query.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.edns = Some(e);
    }
    m
}

/// A minimal error answer built from the raw header (for messages hickory cannot parse).
fn header_error(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None; // too short, or a response: never answer it (no reflection loops)
    }
    let mut h = query[..12].to_vec();
    h[2] = 0x80 | (query[2] & 0x79); // QR, opcode and RD kept
    h[3] = 0x80 | (code.low() & 0x0f); // RA
    h[4..12].fill(0); // no sections
    Some(h)
}

/// Decides the answer to `query` (pure: the policy and the synthetic table are passed in).
///
/// ```
/// use nitro_net::dns::{decide, DnsConfig, DnsDecision, DnsOutcome};
/// use nitro_net::synthetic::{SyntheticConfig, SyntheticNames};
/// use nitro_net::Policy;
///
/// let policy = Policy::builder().allow_host("*.example.com", &[443]).build()?;
/// let names = SyntheticNames::new(SyntheticConfig::default())?;
/// // A query for "api.example.com" A, as `dig` sends it.
/// let q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03api\x07example\x03com\x00\x00\x01\x00\x01";
/// match decide(q, Some(&policy), &names, &DnsConfig::default()) {
///     DnsOutcome::Reply { decision, name, .. } => {
///         assert_eq!((decision, name.as_str()), (DnsDecision::Synthetic, "api.example.com"));
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decide(
    query: &[u8],
    policy: Option<&Policy>,
    names: &SyntheticNames,
    config: &DnsConfig,
) -> DnsOutcome {
    let malformed = |code: ResponseCode, name: String| match header_error(query, code) {
        Some(message) => DnsOutcome::Reply {
            message,
            decision: DnsDecision::Malformed,
            name,
        },
        None => DnsOutcome::Drop,
    };
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return malformed(ResponseCode::FormErr, String::new()),
    };
    if msg.metadata.message_type != MessageType::Query {
        return DnsOutcome::Drop;
    }
    let encode = |m: Message, decision: DnsDecision, name: String| match m.to_vec() {
        Ok(message) => DnsOutcome::Reply {
            message,
            decision,
            name,
        },
        Err(_) => malformed(ResponseCode::ServFail, name),
    };
    if msg.metadata.op_code != OpCode::Query {
        return encode(
            reply(&msg, ResponseCode::NotImp, Vec::new()),
            DnsDecision::Malformed,
            String::new(),
        );
    }
    let [q] = msg.queries.as_slice() else {
        return encode(
            reply(&msg, ResponseCode::FormErr, Vec::new()),
            DnsDecision::Malformed,
            String::new(),
        );
    };
    let raw_name = q.name().to_ascii();
    if q.query_class() != DNSClass::IN {
        return encode(
            reply(&msg, ResponseCode::NotImp, Vec::new()),
            DnsDecision::Malformed,
            raw_name,
        );
    }
    let admitted = match policy {
        Some(p) => p.check_name_any_port(&raw_name),
        None => match crate::policy::normalize_host(&raw_name) {
            Ok(crate::policy::Host::Name(n)) => Ok(n),
            Ok(crate::policy::Host::Ip(ip)) => Ok(ip.to_string()),
            Err(e) => Err(Refusal::new(RefusalCode::BadRequest, e.to_string())),
        },
    };
    let name = match admitted {
        Ok(n) => n,
        Err(_) => {
            let code = if config.deny_nxdomain {
                ResponseCode::NXDomain
            } else {
                ResponseCode::Refused
            };
            return encode(reply(&msg, code, Vec::new()), DnsDecision::Denied, raw_name);
        }
    };
    // A name that is an IP literal ("10.0.0.1.") has no synthetic address.
    let literal = name.parse::<IpAddr>().is_ok();
    let qtype = q.query_type();
    let record = |data: RData| Record::from_rdata(q.name().clone(), names.ttl(), data);
    match qtype {
        RecordType::A | RecordType::AAAA if !literal => {
            if qtype == RecordType::AAAA && !config.ipv6 {
                return encode(
                    reply(&msg, ResponseCode::NoError, Vec::new()),
                    DnsDecision::NoData,
                    name,
                );
            }
            let (v4, v6) = names.assign(&name);
            let rec = if qtype == RecordType::A {
                record(RData::A(A(v4)))
            } else {
                record(RData::AAAA(AAAA(v6)))
            };
            encode(
                reply(&msg, ResponseCode::NoError, vec![rec]),
                DnsDecision::Synthetic,
                name,
            )
        }
        // Service bindings carry address hints that would bypass the synthetic mapping.
        RecordType::HTTPS | RecordType::SVCB => encode(
            reply(&msg, ResponseCode::NoError, Vec::new()),
            DnsDecision::NoData,
            name,
        ),
        _ => DnsOutcome::Forward(Question {
            id: msg.metadata.id,
            query: q.clone(),
            name,
        }),
    }
}

/// Checks the parent's answer to a forwarded question: a well-formed response with the same
/// id and the same single question. Returns it re-encoded (so that what reaches the
/// application is what hickory parsed), cut to `max_len` with the TC bit when longer.
pub fn check_forwarded_answer(
    question: &Question,
    answer: &[u8],
    max_len: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let bad = |r: &str| ProtocolError::malformed("forwarded DNS answer", r.to_owned());
    let m = Message::from_vec(answer).map_err(|e| bad(&e.to_string()))?;
    if m.metadata.message_type != MessageType::Response || m.metadata.id != question.id {
        return Err(bad("not a response to the question"));
    }
    match m.queries.as_slice() {
        [q] if q.query_type() == question.query.query_type()
            && q.query_class() == question.query.query_class()
            && q.name().eq_case(question.query.name()) => {}
        _ => return Err(bad("the question differs")),
    }
    let out = m.to_vec().map_err(|e| bad(&e.to_string()))?;
    if out.len() <= max_len {
        return Ok(out);
    }
    m.truncate().to_vec().map_err(|e| bad(&e.to_string()))
}

fn servfail(question: &Question, code: ResponseCode) -> Vec<u8> {
    let mut q = Message::query();
    q.metadata.id = question.id;
    q.metadata.recursion_desired = true;
    q.queries = vec![question.query.clone()];
    reply(&q, code, Vec::new()).to_vec().unwrap_or_default()
}

/// The in-enclave DNS server: answers from the enclave policy and the synthetic table, and
/// forwards other questions through the egress tunnel.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use nitro_net::dns::DnsServer;
/// use nitro_net::synthetic::{SyntheticConfig, SyntheticNames};
///
/// let egress = nitro_net::EgressClient::new("vsock:3:8000".parse()?);
/// let names = SyntheticNames::new(SyntheticConfig::default())?;
/// let dns = DnsServer::new(egress, names).bind("127.0.0.1:53".parse()?).await?;
/// println!("{:?}", dns.stats());
/// dns.detach(); // serve for the life of the process
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DnsServer {
    client: EgressClient,
    names: SyntheticNames,
    config: DnsConfig,
}

struct Shared {
    client: EgressClient,
    names: SyntheticNames,
    config: DnsConfig,
    counters: DnsCounters,
    forwards: Arc<Semaphore>,
}

/// A running [`DnsServer`]. Dropping it stops the server; call [`DnsHandle::detach`] to keep
/// it running for the life of the process.
#[derive(Debug)]
#[must_use = "dropping the handle stops the DNS server; call detach() to keep it running"]
pub struct DnsHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    detached: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl DnsHandle {
    /// The UDP and TCP address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters, one per decision.
    pub fn stats(&self) -> DnsStats {
        self.shared.counters.snapshot()
    }

    /// Stops the server: it answers no new question (questions being forwarded are dropped).
    pub fn shutdown(self) {
        self.shutdown.trigger();
    }

    /// Lets the server run until the process ends.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl Drop for DnsHandle {
    fn drop(&mut self) {
        if !self.detached {
            self.shutdown.trigger();
        }
    }
}

impl DnsServer {
    /// A server deciding with the enclave policy of `client` ([`crate::ClientConfig::policy`];
    /// none admits every name and leaves the decision to the parent), answering from `names`,
    /// and forwarding through `client`.
    pub fn new(client: EgressClient, names: SyntheticNames) -> Self {
        DnsServer {
            client,
            names,
            config: DnsConfig::default(),
        }
    }

    /// Replaces the settings.
    #[must_use]
    pub fn config(mut self, config: DnsConfig) -> Self {
        self.config = config;
        self
    }

    /// Binds UDP and TCP on `addr` (port 0 picks one port free for both) and serves.
    pub async fn bind(self, addr: SocketAddr) -> Result<DnsHandle, Error> {
        let (udp, tcp) = bind_pair(addr).await?;
        let local = udp
            .local_addr()
            .map_err(|e| Error::io("DNS server address", e))?;
        let shared = Arc::new(Shared {
            forwards: Arc::new(Semaphore::new(self.config.max_forwards.max(1))),
            client: self.client,
            names: self.names,
            config: self.config,
            counters: DnsCounters::default(),
        });
        let shutdown = Shutdown::new();
        let udp = Arc::new(udp);
        {
            let (s, sd) = (shared.clone(), shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = serve_udp(s, udp) => {}
                    () = sd.wait() => {}
                }
            });
        }
        {
            let (s, sd) = (shared.clone(), shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = serve_tcp(s, tcp, sd.clone()) => {}
                    () = sd.wait() => {}
                }
            });
        }
        tracing::info!(addr = %local, "dns: serving");
        Ok(DnsHandle {
            addr: local,
            shared,
            shutdown,
            detached: false,
        })
    }
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    // With port 0, retry until a port is free for both protocols.
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| Error::io(format!("bind DNS UDP {addr}"), e))?;
        let port = udp
            .local_addr()
            .map_err(|e| Error::io("DNS server address", e))?
            .port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() != 0 => {
                return Err(Error::io(format!("bind DNS TCP {addr}"), e));
            }
            Err(_) => continue,
        }
    }
    Err(Error::InvalidArgument(format!(
        "no port free for both UDP and TCP on {}",
        addr.ip()
    )))
}

impl Shared {
    /// Counts and logs a local decision.
    fn note(&self, decision: DnsDecision, name: &str) {
        let c = &self.counters;
        match decision {
            DnsDecision::Synthetic => {
                bump(&c.synthetic);
                tracing::debug!(%name, "dns: synthetic answer");
            }
            DnsDecision::NoData => {
                bump(&c.no_data);
                tracing::debug!(%name, "dns: no data");
            }
            DnsDecision::Denied => {
                bump(&c.denied);
                tracing::warn!(%name, "dns: denied by the enclave policy");
            }
            DnsDecision::Malformed => {
                bump(&c.malformed);
                tracing::debug!(%name, "dns: malformed or unsupported question");
            }
        }
    }

    /// Forwards to the parent; the answer to send (never fails: SERVFAIL/REFUSED instead).
    async fn forward(&self, question: &Question, max_len: usize) -> Vec<u8> {
        let r = tokio::time::timeout(
            self.config.forward_timeout,
            forward_query(&self.client, question),
        )
        .await;
        let r = match r {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(
                "forwarded DNS question",
                self.config.forward_timeout,
            )),
        };
        let answer = r.and_then(|a| Ok(check_forwarded_answer(question, &a, max_len)?));
        match answer {
            Ok(a) => {
                bump(&self.counters.forwarded);
                tracing::debug!(name = %question.name, qtype = %question.query.query_type(), "dns: forwarded");
                a
            }
            Err(e) => {
                bump(&self.counters.forward_failed);
                let code = match e.refusal() {
                    Some(r) if r.code == RefusalCode::DeniedByPolicy => ResponseCode::Refused,
                    _ => ResponseCode::ServFail,
                };
                tracing::warn!(name = %question.name, qtype = %question.query.query_type(), error = %crate::error::chain(&e), "dns: forwarding failed");
                servfail(question, code)
            }
        }
    }
}

/// Sends one question through the tunnel and returns the parent's raw answer.
async fn forward_query(client: &EgressClient, question: &Question) -> Result<Vec<u8>, Error> {
    let mut q = Message::query();
    q.metadata.id = question.id;
    q.metadata.recursion_desired = true;
    q.queries = vec![question.query.clone()];
    let bytes = q
        .to_vec()
        .map_err(|e| ProtocolError::malformed("DNS query", e.to_string()))?;
    if bytes.len() > MAX_REQUEST_BODY {
        return Err(ProtocolError::TooLong {
            what: "DNS query",
            len: bytes.len(),
            max: MAX_REQUEST_BODY,
        }
        .into());
    }
    let req = Request::Dns { message: bytes }.encode()?;
    let (_stream, resp) = client.exchange(&req).await?;
    match resp {
        Response::Dns { message } => Ok(message),
        Response::Refused { refusal, .. } => Err(Error::Refused(refusal)),
        other => Err(ProtocolError::malformed(
            "tunnel response",
            format!("expected a DNS answer, got {other:?}"),
        )
        .into()),
    }
}

async fn serve_udp(shared: Arc<Shared>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // Transient (an ICMP error reported on the socket, ...): never a busy loop.
                tracing::debug!(error = %crate::error::chain(&e), "dns: UDP receive failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        bump(&shared.counters.queries);
        let query = &buf[..n];
        let outcome = decide(
            query,
            shared.client.config().policy.as_deref(),
            &shared.names,
            &shared.config,
        );
        match outcome {
            DnsOutcome::Reply {
                message,
                decision,
                name,
            } => {
                shared.note(decision, &name);
                let _ = sock.send_to(&message, from).await;
            }
            DnsOutcome::Drop => bump(&shared.counters.malformed),
            DnsOutcome::Forward(question) => {
                let max_len = Message::from_vec(query)
                    .map(|m| usize::from(m.max_payload()))
                    .unwrap_or(512);
                let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
                    bump(&shared.counters.forward_failed);
                    let _ = sock
                        .send_to(&servfail(&question, ResponseCode::ServFail), from)
                        .await;
                    continue;
                };
                let (s, sock) = (shared.clone(), sock.clone());
                tokio::spawn(async move {
                    let answer = s.forward(&question, max_len).await;
                    let _ = sock.send_to(&answer, from).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener, shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(shared.config.max_tcp_connections.max(1)));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %crate::error::chain(&e), "dns: TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (s, sd) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = serve_tcp_conn(s, stream) => {}
                () = sd.wait() => {}
            }
            drop(permit);
        });
    }
}

async fn serve_tcp_conn(shared: Arc<Shared>, mut stream: TcpStream) {
    let idle = shared.config.tcp_idle_timeout;
    let mut buf = vec![0u8; MAX_DNS_RESPONSE_BODY];
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n == 0 || n > buf.len() {
            bump(&shared.counters.malformed);
            return;
        }
        match tokio::time::timeout(idle, stream.read_exact(&mut buf[..n])).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        bump(&shared.counters.queries);
        let outcome = decide(
            &buf[..n],
            shared.client.config().policy.as_deref(),
            &shared.names,
            &shared.config,
        );
        let answer = match outcome {
            DnsOutcome::Reply {
                message,
                decision,
                name,
            } => {
                shared.note(decision, &name);
                message
            }
            DnsOutcome::Drop => {
                bump(&shared.counters.malformed);
                return;
            }
            DnsOutcome::Forward(question) => shared.forward(&question, usize::from(u16::MAX)).await,
        };
        let Ok(l) = u16::try_from(answer.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&l.to_be_bytes());
        out.extend_from_slice(&answer);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Parent side: answers a `DNS` tunnel request. Checks the question against the parent's
/// policy, asks `upstream` over UDP (TCP when the answer is truncated), and returns the answer
/// (at most [`MAX_DNS_RESPONSE_BODY`] bytes, truncated with the TC bit beyond).
pub(crate) async fn answer_on_parent(
    policy: &Policy,
    upstream: Option<SocketAddr>,
    query: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, Refusal> {
    let bad = |r: String| Refusal::new(RefusalCode::BadRequest, r);
    let msg = Message::from_vec(query).map_err(|e| bad(format!("DNS query: {e}")))?;
    if msg.metadata.message_type != MessageType::Query || msg.metadata.op_code != OpCode::Query {
        return Err(bad("DNS message is not a query".into()));
    }
    let [q] = msg.queries.as_slice() else {
        return Err(bad("DNS query must have exactly one question".into()));
    };
    let name = q.name().to_ascii();
    policy
        .check_name_any_port(&name)
        .map_err(|r| Refusal::new(r.code, format!("DNS question for {name}: {}", r.message)))?;
    let Some(upstream) = upstream else {
        return Err(Refusal::new(
            RefusalCode::NotSupported,
            "DNS forwarding is not configured on this parent",
        ));
    };
    let question = Question {
        id: msg.metadata.id,
        query: q.clone(),
        name: name.clone(),
    };
    let fail = |r: String| Refusal::new(RefusalCode::ResolveFailed, r);
    let asked = tokio::time::timeout(timeout, async {
        let raw = ask_udp(upstream, query).await?;
        let tc = raw.len() >= 3 && raw[2] & 0x02 != 0;
        if tc {
            ask_tcp(upstream, query).await
        } else {
            Ok(raw)
        }
    })
    .await
    .map_err(|_| fail(format!("DNS upstream {upstream}: timed out")))?
    .map_err(|e| fail(format!("DNS upstream {upstream}: {e}")))?;
    check_forwarded_answer(&question, &asked, MAX_DNS_RESPONSE_BODY)
        .map_err(|e| fail(format!("DNS upstream {upstream}: {e}")))
}

async fn ask_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(local).await?;
    s.connect(upstream).await?;
    s.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = s.recv(&mut buf).await?;
        // Only an answer with the query's id counts (a connected socket filters the source).
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(query);
    s.write_all(&out).await?;
    let mut l = [0u8; 2];
    s.read_exact(&mut l).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(l))];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticConfig;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.metadata.recursion_desired = true;
        m.queries = vec![Query::query(Name::from_ascii(name).unwrap(), t)];
        m.to_vec().unwrap()
    }

    fn setup() -> (Policy, SyntheticNames) {
        let p = Policy::builder()
            .allow_host("*.example.com", &[443])
            .deny_host("bad.example.com", &[])
            .build()
            .unwrap();
        (p, SyntheticNames::new(SyntheticConfig::default()).unwrap())
    }

    fn answer(o: DnsOutcome) -> (Message, DnsDecision) {
        match o {
            DnsOutcome::Reply {
                message, decision, ..
            } => (Message::from_vec(&message).unwrap(), decision),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn synthetic_denied_nodata_forward() {
        let (p, names) = setup();
        let cfg = DnsConfig::default();
        let (m, d) = answer(decide(
            &query("API.example.com.", RecordType::A),
            Some(&p),
            &names,
            &cfg,
        ));
        assert_eq!(d, DnsDecision::Synthetic);
        assert_eq!(m.metadata.id, 0x4242);
        let RData::A(a) = &m.answers[0].data else {
            panic!()
        };
        assert_eq!(
            names.lookup(IpAddr::V4(a.0)),
            crate::synthetic::SyntheticLookup::Name("api.example.com".into())
        );
        let (m, d) = answer(decide(
            &query("api.example.com.", RecordType::AAAA),
            Some(&p),
            &names,
            &cfg,
        ));
        assert_eq!((d, m.answers.len()), (DnsDecision::Synthetic, 1));
        for denied in ["bad.example.com.", "example.org."] {
            let (m, d) = answer(decide(
                &query(denied, RecordType::A),
                Some(&p),
                &names,
                &cfg,
            ));
            assert_eq!(d, DnsDecision::Denied);
            assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        }
        let nx = DnsConfig {
            deny_nxdomain: true,
            ipv6: false,
            ..DnsConfig::default()
        };
        let (m, _) = answer(decide(
            &query("example.org.", RecordType::A),
            Some(&p),
            &names,
            &nx,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let (m, d) = answer(decide(
            &query("a.example.com.", RecordType::AAAA),
            Some(&p),
            &names,
            &nx,
        ));
        assert_eq!((d, m.answers.len()), (DnsDecision::NoData, 0));
        let (_, d) = answer(decide(
            &query("a.example.com.", RecordType::HTTPS),
            Some(&p),
            &names,
            &cfg,
        ));
        assert_eq!(d, DnsDecision::NoData);
        match decide(
            &query("a.example.com.", RecordType::TXT),
            Some(&p),
            &names,
            &cfg,
        ) {
            DnsOutcome::Forward(q) => assert_eq!(q.name, "a.example.com"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_and_responses() {
        let (p, names) = setup();
        let cfg = DnsConfig::default();
        assert_eq!(decide(b"", Some(&p), &names, &cfg), DnsOutcome::Drop);
        // A response is never answered.
        let mut resp = query("a.example.com.", RecordType::A);
        resp[2] |= 0x80;
        assert_eq!(decide(&resp, Some(&p), &names, &cfg), DnsOutcome::Drop);
        // Garbage after a valid header: FORMERR with the same id.
        let mut junk = query("a.example.com.", RecordType::A);
        junk.truncate(14);
        let (m, d) = answer(decide(&junk, Some(&p), &names, &cfg));
        assert_eq!(
            (m.metadata.id, m.metadata.response_code, d),
            (0x4242, ResponseCode::FormErr, DnsDecision::Malformed)
        );
    }

    #[test]
    fn forwarded_answers_are_checked() {
        let (p, names) = setup();
        let DnsOutcome::Forward(q) = decide(
            &query("a.example.com.", RecordType::TXT),
            Some(&p),
            &names,
            &DnsConfig::default(),
        ) else {
            panic!()
        };
        let mut ok = Message::from_vec(&query("a.example.com.", RecordType::TXT)).unwrap();
        ok.metadata.message_type = MessageType::Response;
        let ok = ok.to_vec().unwrap();
        assert!(check_forwarded_answer(&q, &ok, 512).is_ok());
        let other = query("b.example.com.", RecordType::TXT);
        let mut other_resp = Message::from_vec(&other).unwrap();
        other_resp.metadata.message_type = MessageType::Response;
        assert!(check_forwarded_answer(&q, &other_resp.to_vec().unwrap(), 512).is_err());
        assert!(
            check_forwarded_answer(&q, &query("a.example.com.", RecordType::TXT), 512).is_err()
        );
        assert!(check_forwarded_answer(&q, b"\x42\x42", 512).is_err());
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the decision, and what it answers parses.
        #[test]
        fn decide_is_total(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let (p, names) = setup();
            if let DnsOutcome::Reply { message, .. } = decide(&b, Some(&p), &names, &DnsConfig::default()) {
                proptest::prop_assert!(message.len() >= 12);
            }
        }
    }
}
