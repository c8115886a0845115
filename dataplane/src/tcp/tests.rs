//! State-by-state tests of the TCP engine against a scripted peer: each
//! test injects hand-built segments and checks the segments and events
//! that come out. Grouped by the state under test.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::conn::Conn;
use super::*;
use crate::buf::Pool;
use crate::net::IpSender;
use crate::time::Instant;
use crate::txbuf::TxBuf;
use crate::wire::tcp::{SeqNum, TcpFlags, TcpPacket, TcpRepr};

const US: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 80;
const PEER_PORT: u16 = 40000;
/// The scripted peer's initial sequence number.
const PISS: u32 = 1000;

const ACK: TcpFlags = TcpFlags::EMPTY;
const SYN: TcpFlags = TcpFlags::SYN;
const FIN: TcpFlags = TcpFlags::FIN;
const RST: TcpFlags = TcpFlags::RST;

fn tuple() -> FourTuple {
    FourTuple {
        local: SocketAddrV4::new(US, PORT),
        remote: SocketAddrV4::new(PEER, PEER_PORT),
    }
}

/// Captures every segment the stack sends (or, with `fail`, refuses it
/// like an IP layer out of buffers).
#[derive(Default)]
struct Wire {
    out: Vec<Vec<u8>>,
    fail: bool,
}

impl IpSender for Wire {
    fn send_tcp(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        l4_len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> bool {
        assert_eq!((src, dst), (US, PEER));
        if self.fail {
            return false;
        }
        let mut b = vec![0xa5; l4_len];
        fill(&mut b);
        self.out.push(b);
        true
    }
}

/// A segment the stack sent, parsed (checksum verified).
#[derive(Debug)]
struct Out {
    r: TcpRepr,
    payload: Vec<u8>,
}

impl Out {
    fn seq(&self) -> u32 {
        self.r.seq.0
    }
    fn ack(&self) -> u32 {
        self.r.ack.expect("segment without ACK").0
    }
    fn has(&self, f: TcpFlags) -> bool {
        self.r.flags.contains(f)
    }
}

fn test_config() -> TcpConfig {
    TcpConfig {
        max_conns: 64,
        tx_queue_entries: 256,
        rx_queue_entries: 256,
        time_wait: Duration::from_secs(2),
        fin_wait_2_timeout: Duration::from_secs(5),
        ..TcpConfig::default()
    }
}

struct T {
    s: TcpStack,
    pool: Pool,
    wire: Wire,
    ev: Vec<TcpEvent>,
    now: Instant,
}

impl T {
    fn new(cfg: TcpConfig) -> T {
        let now = Instant::from_millis(1000);
        T {
            s: TcpStack::new(cfg, now, [9; 16]),
            pool: Pool::new(1, 512, false).unwrap(),
            wire: Wire::default(),
            ev: Vec::new(),
            now,
        }
    }

    fn listening() -> T {
        let mut t = T::new(test_config());
        t.s.listen(PORT).unwrap();
        t
    }

    fn input_bytes(&mut self, bytes: &[u8]) {
        let mut b = self.pool.alloc().unwrap();
        assert!(b.extend_from_slice(bytes));
        self.s
            .input(self.now, PEER, US, b, &mut self.wire, &mut self.ev);
    }

    fn inject_repr(&mut self, r: TcpRepr, payload: &[u8]) {
        let mut b = vec![0u8; r.header_len() + payload.len()];
        b[r.header_len()..].copy_from_slice(payload);
        r.emit(&mut TcpPacket::new_unchecked(&mut b[..]), PEER, US);
        self.input_bytes(&b);
    }

    /// A segment from the peer; `ack` None means no ACK flag.
    fn inject(&mut self, seq: u32, ack: Option<u32>, flags: TcpFlags, window: u16, data: &[u8]) {
        self.inject_port(PORT, seq, ack, flags, window, data);
    }

    fn inject_port(
        &mut self,
        port: u16,
        seq: u32,
        ack: Option<u32>,
        flags: TcpFlags,
        window: u16,
        data: &[u8],
    ) {
        let r = TcpRepr {
            src_port: PEER_PORT,
            dst_port: port,
            seq: SeqNum(seq),
            ack: ack.map(SeqNum),
            flags,
            window,
            mss: None,
            window_scale: None,
            sack_permitted: false,
            payload_len: data.len(),
        };
        self.inject_repr(r, data);
    }

    fn inject_syn(&mut self, mss: Option<u16>, ws: Option<u8>) {
        let r = TcpRepr {
            src_port: PEER_PORT,
            dst_port: PORT,
            seq: SeqNum(PISS),
            ack: None,
            flags: SYN,
            window: 65535,
            mss,
            window_scale: ws,
            sack_permitted: true,
            payload_len: 0,
        };
        self.inject_repr(r, &[]);
    }

    fn flush(&mut self) {
        self.s.flush(self.now, &mut self.wire);
    }

    /// Moves the clock forward, runs timers and flushes.
    fn wait(&mut self, d: Duration) {
        self.now = self.now + d;
        self.s.poll(self.now, &mut self.wire, &mut self.ev);
        self.flush();
    }

    fn out(&mut self) -> Vec<Out> {
        self.wire
            .out
            .drain(..)
            .map(|b| {
                let p = TcpPacket::new_checked(&b[..]).unwrap();
                let r = TcpRepr::parse(&p, US, PEER).expect("we emit valid segments");
                Out {
                    r,
                    payload: p.payload().to_vec(),
                }
            })
            .collect()
    }

    fn one_out(&mut self) -> Out {
        let mut v = self.out();
        assert_eq!(v.len(), 1, "expected one segment, got {v:?}");
        v.pop().unwrap()
    }

    fn events(&mut self) -> Vec<TcpEvent> {
        std::mem::take(&mut self.ev)
    }

    fn conn(&self) -> &Conn {
        self.s.conn_by_tuple(&tuple()).expect("connection exists")
    }

    /// Passive open up to the knock: the peer's SYN (with `mss`, `ws`), our
    /// SYN-ACK, the peer's ACK advertising `window`. Returns the knocking
    /// handle and our first data sequence number.
    fn knocked(&mut self, mss: Option<u16>, ws: Option<u8>, window: u16) -> (ConnId, u32) {
        self.inject_syn(mss, ws);
        self.flush();
        let our = self.one_out().seq() + 1;
        self.inject(PISS + 1, Some(our), ACK, window, &[]);
        match self.events().as_slice() {
            [TcpEvent::Knock { conn, .. }] => (*conn, our),
            e => panic!("expected a knock, got {e:?}"),
        }
    }

    /// Passive open with MSS 1460 / window scale 7 from the peer, accepted
    /// with cookie 7. Returns the handle and our first data sequence number.
    fn established(&mut self) -> (ConnId, u32) {
        let (conn, our) = self.knocked(Some(1460), Some(7), 1024);
        self.s.accept(conn, 7, &mut self.ev).unwrap();
        assert!(self.events().is_empty());
        self.flush();
        assert!(self.out().is_empty(), "nothing to say after the handshake");
        (conn, our)
    }
}

fn recv_bytes(ev: &[TcpEvent]) -> Vec<u8> {
    ev.iter()
        .filter_map(|e| match e {
            TcpEvent::Recv { data, .. } => Some(data.data().to_vec()),
            _ => None,
        })
        .flatten()
        .collect()
}

// ---------------------------------------------------------------- CLOSED

#[test]
fn closed_port_gets_rst() {
    let mut t = T::listening();
    // SYN without ACK to a closed port: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><RST,ACK>.
    t.inject_port(81, 5000, None, SYN, 100, &[]);
    let o = t.one_out();
    assert!(o.has(RST));
    assert_eq!((o.seq(), o.ack()), (0, 5001));
    assert_eq!(o.r.src_port, 81);
    // A segment with ACK: <SEQ=SEG.ACK><RST>.
    t.inject_port(81, 5000, Some(777), ACK, 100, b"xyz");
    let o = t.one_out();
    assert!(o.has(RST) && o.r.ack.is_none());
    assert_eq!(o.seq(), 777);
    assert_eq!(t.s.stats().dropped_no_listener, 2);
    assert_eq!(t.s.stats().rst_sent, 2);
}

#[test]
fn closed_port_ignores_rst() {
    let mut t = T::listening();
    t.inject_port(81, 5000, Some(1), RST, 0, &[]);
    assert!(t.out().is_empty());
}

#[test]
fn malformed_segments_are_dropped_and_counted() {
    let mut t = T::listening();
    t.input_bytes(&[0u8; 10]);
    let mut r = vec![0u8; 20];
    let repr = TcpRepr {
        src_port: PEER_PORT,
        dst_port: PORT,
        seq: SeqNum(1),
        ack: None,
        flags: SYN,
        window: 0,
        mss: None,
        window_scale: None,
        sack_permitted: false,
        payload_len: 0,
    };
    repr.emit(&mut TcpPacket::new_unchecked(&mut r[..]), PEER, US);
    let mut bad_sum = r.clone();
    bad_sum[4] ^= 1;
    t.input_bytes(&bad_sum);
    let mut bad_off = r.clone();
    bad_off[12] = 0xf0;
    t.input_bytes(&bad_off);
    let mut syn_rst = r.clone();
    syn_rst[13] = 0x06;
    TcpPacket::new_unchecked(&mut syn_rst[..]).fill_checksum(PEER, US);
    t.input_bytes(&syn_rst);
    t.flush();
    let st = t.s.stats();
    assert_eq!(st.dropped_bad_checksum, 1);
    assert_eq!(st.dropped_malformed, 3);
    assert_eq!(t.s.conn_count(), 0);
    assert!(t.out().is_empty());
}

// ---------------------------------------------------------------- LISTEN

#[test]
fn listen_syn_gets_synack_with_mss_and_wscale() {
    let mut t = T::listening();
    t.inject_syn(Some(1400), Some(9));
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("SYN-RECEIVED"));
    assert!(t.out().is_empty(), "replies wait for flush");
    t.flush();
    let o = t.one_out();
    assert!(o.has(SYN));
    assert_eq!(o.ack(), PISS + 1);
    assert_eq!(o.r.mss, Some(1460));
    assert_eq!(o.r.window_scale, Some(7));
    assert_eq!(o.r.window, 65535, "SYN windows are unscaled");
    assert!(!o.r.sack_permitted);
    assert_eq!(t.conn().snd_mss, 1400);
    assert_eq!(t.conn().snd_wscale, 9);
    assert_eq!(t.s.stats().half_open, 1);
}

#[test]
fn listen_syn_without_wscale_disables_scaling_both_ways() {
    let mut t = T::listening();
    t.inject_syn(None, None);
    t.flush();
    let o = t.one_out();
    assert_eq!(o.r.window_scale, None);
    assert_eq!(t.conn().snd_mss, 536, "RFC 9293 default MSS");
    let our = o.seq() + 1;
    t.inject(PISS + 1, Some(our), ACK, 1000, &[]);
    assert_eq!(t.conn().snd_wnd, 1000, "peer window not scaled");
    assert_eq!(t.conn().rcv_wscale, 0);
    let conn = match t.events().as_slice() {
        [TcpEvent::Knock { conn, .. }] => *conn,
        e => panic!("{e:?}"),
    };
    t.s.accept(conn, 1, &mut t.ev).unwrap();
    t.inject(PISS + 1, Some(our), ACK, 1000, b"hi");
    t.wait(Duration::from_millis(1));
    let o = t.one_out();
    assert_eq!(o.ack(), PISS + 3);
    assert_eq!(o.r.window, 65535, "unscaled window, capped at 65535");
}

#[test]
fn syn_flood_is_bounded() {
    let cfg = TcpConfig {
        max_half_open: 8,
        ..test_config()
    };
    let mut t = T::new(cfg);
    t.s.listen(PORT).unwrap();
    for i in 0..100u16 {
        let r = TcpRepr {
            src_port: 1000 + i,
            dst_port: PORT,
            seq: SeqNum(u32::from(i) * 7),
            ack: None,
            flags: SYN,
            window: 1000,
            mss: Some(1460),
            window_scale: None,
            sack_permitted: false,
            payload_len: 0,
        };
        t.inject_repr(r, &[]);
    }
    t.flush();
    assert_eq!(t.out().len(), 8, "one SYN-ACK per admitted SYN");
    let st = t.s.stats();
    assert_eq!(st.half_open, 8);
    assert_eq!(st.syn_dropped_half_open, 92);
    assert_eq!(t.s.conn_count(), 8);
    // Half-open connections give up after their SYN-ACK retries and free
    // their slots.
    for _ in 0..10 {
        t.wait(Duration::from_secs(60));
    }
    assert_eq!(t.s.conn_count(), 0);
    assert_eq!(t.s.stats().half_open, 0);
    assert!(t.events().is_empty(), "half-open deaths are not reported");
}

#[test]
fn listen_backlog_full_drops_syn() {
    let cfg = TcpConfig {
        backlog: 1,
        ..test_config()
    };
    let mut t = T::new(cfg);
    t.s.listen(PORT).unwrap();
    // First connection completes and waits for accept.
    t.inject_syn(Some(1460), None);
    t.flush();
    let our = t.one_out().seq() + 1;
    t.inject(PISS + 1, Some(our), ACK, 1000, &[]);
    assert!(matches!(t.events().as_slice(), [TcpEvent::Knock { .. }]));
    // A second SYN finds the backlog full.
    let r = TcpRepr {
        src_port: PEER_PORT + 1,
        dst_port: PORT,
        seq: SeqNum(1),
        ack: None,
        flags: SYN,
        window: 1000,
        mss: None,
        window_scale: None,
        sack_permitted: false,
        payload_len: 0,
    };
    t.inject_repr(r, &[]);
    t.flush();
    assert_eq!(t.s.stats().syn_dropped_backlog, 1);
    assert_eq!(t.s.conn_count(), 1);
}

#[test]
fn listen_port_twice_is_an_error_and_unlisten_resets_half_open() {
    let mut t = T::listening();
    assert_eq!(t.s.listen(PORT), Err(TcpError::PortInUse { port: PORT }));
    t.inject_syn(None, None);
    t.flush();
    t.out();
    t.s.unlisten(PORT);
    t.flush();
    let o = t.one_out();
    assert!(o.has(RST));
    assert_eq!(t.s.conn_count(), 0);
    t.inject_syn(None, None);
    assert!(t.one_out().has(RST), "nobody listens any more");
}

// ---------------------------------------------------------- SYN-RECEIVED

#[test]
fn syn_received_ack_completes_handshake_with_knock() {
    let mut t = T::listening();
    t.inject_syn(Some(1460), Some(7));
    t.flush();
    let our = t.one_out().seq() + 1;
    t.inject(PISS + 1, Some(our), ACK, 512, &[]);
    match t.events().as_slice() {
        [TcpEvent::Knock { tuple: tu, .. }] => assert_eq!(*tu, tuple()),
        e => panic!("{e:?}"),
    }
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("ESTABLISHED"));
    assert_eq!(t.conn().snd_wnd, 512 << 7, "scaled after the handshake");
    assert_eq!(t.s.stats().half_open, 0);
}

#[test]
fn syn_received_rst_frees_half_open() {
    let mut t = T::listening();
    t.inject_syn(None, None);
    t.flush();
    t.out();
    t.inject(PISS + 1, None, RST, 0, &[]);
    assert_eq!(t.s.conn_count(), 0);
    assert_eq!(t.s.stats().half_open, 0);
    assert!(t.events().is_empty());
}

#[test]
fn syn_received_duplicate_syn_resends_synack() {
    let mut t = T::listening();
    t.inject_syn(None, None);
    t.flush();
    let first = t.one_out();
    t.inject_syn(None, None);
    t.flush();
    let again = t.one_out();
    assert!(again.has(SYN));
    assert_eq!(again.seq(), first.seq());
    assert_eq!(t.s.conn_count(), 1);
}

/// Regression: a retransmitted SYN and the handshake's ACK in one batch
/// (before a flush) left SND.NXT behind SND.UNA, so the connection never
/// sent its data and armed no timer (seen as 2 of 1,000 connections
/// stalling under 2% duplication).
#[test]
fn syn_received_duplicate_syn_then_ack_in_one_batch_still_sends() {
    let mut t = T::listening();
    t.inject_syn(Some(1460), Some(7));
    t.flush();
    let our = t.one_out().seq() + 1;
    t.inject_syn(Some(1460), Some(7));
    t.inject(PISS + 1, Some(our), ACK, 1024, &[]);
    let conn = match t.events().as_slice() {
        [TcpEvent::Knock { conn, .. }] => *conn,
        e => panic!("expected a knock, got {e:?}"),
    };
    t.s.accept(conn, 7, &mut t.ev).unwrap();
    let data = TxBuf::from_vec(b"hello".to_vec());
    assert_eq!(t.s.send(conn, &[data]).unwrap(), 5);
    t.flush();
    let sent: Vec<Out> = t
        .out()
        .into_iter()
        .filter(|o| !o.payload.is_empty())
        .collect();
    assert_eq!(sent.len(), 1, "the data goes out: {sent:?}");
    assert_eq!(sent[0].seq(), our);
    assert_eq!(sent[0].payload, b"hello");
}

#[test]
fn syn_received_bad_ack_gets_rst() {
    let mut t = T::listening();
    t.inject_syn(None, None);
    t.flush();
    let our = t.one_out().seq();
    t.inject(PISS + 1, Some(our + 100), ACK, 100, &[]);
    let o = t.one_out();
    assert!(o.has(RST));
    assert_eq!(o.seq(), our + 100);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("SYN-RECEIVED"));
}

#[test]
fn syn_received_synack_is_retransmitted_with_backoff() {
    let mut t = T::listening();
    t.inject_syn(None, None);
    t.flush();
    t.out();
    t.wait(Duration::from_millis(999));
    assert!(t.out().is_empty());
    t.wait(Duration::from_millis(2));
    assert!(t.one_out().has(SYN), "after the initial RTO of 1 s");
    t.wait(Duration::from_millis(1990));
    assert!(t.out().is_empty(), "backed off to 2 s");
    t.wait(Duration::from_millis(20));
    assert!(t.one_out().has(SYN));
}

#[test]
fn syn_sent_retransmitted_syn_restarts_rto_at_initial_after_handshake() {
    let mut t = T::new(test_config());
    let (conn, syn) = connect(&mut t);
    for backoff in [1u64, 2, 4] {
        t.wait(Duration::from_millis(1000 * backoff + 5));
        assert!(t.one_out().has(SYN));
    }
    t.inject(PISS, Some(syn.seq() + 1), SYN | ACK, 1024, &[]);
    t.events();
    t.out();
    let data = TxBuf::from_vec(vec![1; 100]);
    t.s.send(conn, &[data]).unwrap();
    t.flush();
    assert_eq!(t.one_out().payload.len(), 100);
    t.wait(Duration::from_millis(990));
    assert!(t.out().is_empty());
    t.wait(Duration::from_millis(20));
    let again = t.one_out();
    assert_eq!(again.payload.len(), 100, "retransmitted after 1 s, not 8 s");
}

#[test]
fn data_and_fin_before_accept_are_delivered_on_accept() {
    let mut t = T::listening();
    t.inject_syn(Some(1460), Some(7));
    t.flush();
    let our = t.one_out().seq() + 1;
    t.inject(PISS + 1, Some(our), ACK, 512, b"early ");
    let conn = match t.events().as_slice() {
        [TcpEvent::Knock { conn, .. }] => *conn,
        e => panic!("{e:?}"),
    };
    t.inject(PISS + 7, Some(our), FIN, 512, b"bird");
    assert!(t.events().is_empty(), "nothing for the app before accept");
    t.flush();
    assert_eq!(
        t.out().last().unwrap().ack(),
        PISS + 12,
        "data and FIN acked"
    );
    assert_eq!(
        t.s.send(conn, &[TxBuf::from_static(b"x")]),
        Err(TcpError::InvalidState {
            call: "send",
            state: "not yet accepted"
        })
    );
    t.s.accept(conn, 42, &mut t.ev).unwrap();
    let ev = t.events();
    assert_eq!(recv_bytes(&ev), b"early bird");
    assert!(matches!(
        ev.last(),
        Some(TcpEvent::Dead {
            cookie: 42,
            reason: DeadReason::PeerClosed,
            ..
        })
    ));
}

#[test]
fn connection_reset_before_accept_is_reported_with_cookie_0() {
    let mut t = T::listening();
    let (conn, our) = t.knocked(None, None, 512);
    t.inject(PISS + 1, Some(our), RST, 0, &[]);
    match t.events().as_slice() {
        [TcpEvent::Dead {
            conn: c,
            cookie: 0,
            reason: DeadReason::Reset,
        }] => assert_eq!(*c, conn),
        e => panic!("{e:?}"),
    }
    assert_eq!(t.s.accept(conn, 1, &mut t.ev), Err(TcpError::InvalidConn));
    // The backlog slot was released: a new connection is admitted.
    t.inject_syn(None, None);
    assert_eq!(t.s.conn_count(), 1);
}

#[test]
fn reject_sends_rst_and_frees() {
    let mut t = T::listening();
    let (conn, our) = t.knocked(None, None, 512);
    t.s.reject(conn).unwrap();
    t.flush();
    let o = t.one_out();
    assert!(o.has(RST));
    assert_eq!(o.seq(), our);
    assert_eq!(t.s.conn_count(), 0);
    assert_eq!(t.s.reject(conn), Err(TcpError::InvalidConn));
}

// ------------------------------------------------------------- SYN-SENT

fn connect(t: &mut T) -> (ConnId, Out) {
    let conn = t.s.connect(t.now, tuple(), 99).unwrap();
    t.flush();
    let syn = t.one_out();
    (conn, syn)
}

#[test]
fn syn_sent_synack_connects() {
    let mut t = T::new(test_config());
    let (conn, syn) = connect(&mut t);
    assert!(syn.has(SYN) && syn.r.ack.is_none());
    assert_eq!(syn.r.mss, Some(1460));
    assert_eq!(syn.r.window_scale, Some(7));
    assert_eq!(t.s.state_of(conn), Some("SYN-SENT"));
    let r = TcpRepr {
        src_port: PEER_PORT,
        dst_port: PORT,
        seq: SeqNum(PISS),
        ack: Some(SeqNum(syn.seq() + 1)),
        flags: SYN,
        window: 100,
        mss: Some(1000),
        window_scale: Some(2),
        sack_permitted: false,
        payload_len: 0,
    };
    t.now = t.now + Duration::from_millis(3);
    t.inject_repr(r, &[]);
    assert!(matches!(
        t.events().as_slice(),
        [TcpEvent::Connected {
            cookie: 99,
            result: Ok(()),
            ..
        }]
    ));
    t.flush();
    let ack = t.one_out();
    assert_eq!((ack.seq(), ack.ack()), (syn.seq() + 1, PISS + 1));
    let c = t.conn();
    assert_eq!(c.snd_mss, 1000);
    assert_eq!(c.snd_wnd, 100, "the SYN-ACK window is unscaled");
    assert_eq!(c.snd_wscale, 2);
    assert_eq!(c.srtt_us, 3000, "RTT sampled from the handshake");
    assert_eq!(c.cwnd, 10_000, "RFC 6928 initial window");
}

#[test]
fn syn_sent_rst_refuses() {
    let mut t = T::new(test_config());
    let (conn, syn) = connect(&mut t);
    // An RST without an acceptable ACK is ignored.
    t.inject(0, Some(syn.seq() + 5), RST, 0, &[]);
    assert!(t.events().is_empty());
    t.inject(0, Some(syn.seq() + 1), RST, 0, &[]);
    assert!(matches!(
        t.events().as_slice(),
        [TcpEvent::Connected {
            result: Err(ConnectError::Refused),
            ..
        }]
    ));
    assert_eq!(t.s.state_of(conn), None);
    assert_eq!(t.s.send(conn, &[]), Err(TcpError::InvalidConn));
}

#[test]
fn syn_sent_times_out_after_syn_retries() {
    let mut t = T::new(test_config());
    let (_conn, _) = connect(&mut t);
    let mut syns = 0;
    for _ in 0..200 {
        t.wait(Duration::from_secs(1));
        syns += t.out().len();
    }
    assert_eq!(syns, 5, "max_syn_retries retransmissions");
    assert!(matches!(
        t.events().as_slice(),
        [TcpEvent::Connected {
            result: Err(ConnectError::TimedOut),
            ..
        }]
    ));
    assert_eq!(t.s.conn_count(), 0);
}

#[test]
fn syn_sent_bad_ack_gets_rst() {
    let mut t = T::new(test_config());
    let (_conn, syn) = connect(&mut t);
    t.inject(PISS, Some(syn.seq() + 9), SYN, 100, &[]);
    let o = t.one_out();
    assert!(o.has(RST));
    assert_eq!(o.seq(), syn.seq() + 9);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("SYN-SENT"));
}

#[test]
fn simultaneous_open_connects() {
    let mut t = T::new(test_config());
    let (conn, syn) = connect(&mut t);
    // The peer's own SYN crosses ours.
    t.inject(PISS, None, SYN, 100, &[]);
    assert_eq!(t.s.state_of(conn), Some("SYN-RECEIVED"));
    t.flush();
    let synack = t.one_out();
    assert!(synack.has(SYN));
    assert_eq!((synack.seq(), synack.ack()), (syn.seq(), PISS + 1));
    t.inject(PISS + 1, Some(syn.seq() + 1), ACK, 100, &[]);
    assert!(matches!(
        t.events().as_slice(),
        [TcpEvent::Connected {
            cookie: 99,
            result: Ok(()),
            ..
        }]
    ));
    assert_eq!(t.s.state_of(conn), Some("ESTABLISHED"));
}

// ---------------------------------------------------------- ESTABLISHED

#[test]
fn established_in_order_data_is_delivered_zero_copy() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    let mut b = t.pool.alloc().unwrap();
    let r = TcpRepr {
        src_port: PEER_PORT,
        dst_port: PORT,
        seq: SeqNum(PISS + 1),
        ack: Some(SeqNum(our)),
        flags: TcpFlags::PSH,
        window: 100,
        mss: None,
        window_scale: None,
        sack_permitted: false,
        payload_len: 5,
    };
    let mut bytes = vec![0u8; 25];
    bytes[20..].copy_from_slice(b"hello");
    r.emit(&mut TcpPacket::new_unchecked(&mut bytes[..]), PEER, US);
    assert!(b.extend_from_slice(&bytes));
    let slot = b.index();
    t.s.input(t.now, PEER, US, b, &mut t.wire, &mut t.ev);
    match t.events().as_slice() {
        [TcpEvent::Recv {
            conn: c,
            cookie: 7,
            data,
        }] => {
            assert_eq!(*c, conn);
            assert_eq!(data.data(), b"hello");
            assert_eq!(data.index(), slot, "a view of the RX buffer");
            assert_eq!(data.offset(), crate::buf::BUF_HEADROOM + 20);
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(t.s.stats().bytes_in, 5);
}

#[test]
fn established_out_of_order_is_queued_then_delivered_in_order() {
    let mut t = T::listening();
    let (_conn, our) = t.established();
    let base = PISS + 1;
    t.inject(base + 10, Some(our), ACK, 100, b"KLMNO");
    t.inject(base + 20, Some(our), ACK, 100, b"UVW");
    assert!(t.events().is_empty());
    t.flush();
    let acks = t.out();
    assert_eq!(acks.len(), 1, "ACKs coalesced until flush");
    assert_eq!(acks[0].ack(), base, "duplicate ACK for the gap");
    t.inject(base + 5, Some(our), ACK, 100, b"FGHIJ");
    assert!(t.events().is_empty());
    t.inject(base, Some(our), ACK, 100, b"ABCDE");
    assert_eq!(recv_bytes(&t.events()), b"ABCDEFGHIJKLMNO");
    t.flush();
    assert_eq!(t.one_out().ack(), base + 15, "gap filled: immediate ACK");
    t.inject(base + 15, Some(our), ACK, 100, b"PQRST");
    assert_eq!(recv_bytes(&t.events()), b"PQRSTUVW");
    assert_eq!(t.s.stats().rx_queue_used, 0);
}

#[test]
fn established_overlapping_and_duplicate_segments_delivered_once() {
    let mut t = T::listening();
    let (_conn, our) = t.established();
    let base = PISS + 1;
    let msg = b"0123456789abcdefghij";
    // Out of order pieces that overlap each other in every way.
    t.inject(base + 8, Some(our), ACK, 100, &msg[8..12]);
    t.inject(base + 6, Some(our), ACK, 100, &msg[6..14]); // covers the held one
    t.inject(base + 10, Some(our), ACK, 100, &msg[10..16]); // overlaps its end
    t.inject(base + 7, Some(our), ACK, 100, &msg[7..9]); // duplicate
    t.inject(base + 18, Some(our), ACK, 100, &msg[18..20]);
    t.inject(base + 17, Some(our), ACK, 100, &msg[17..19]); // overlaps next's front
    assert!(t.events().is_empty());
    t.inject(base, Some(our), ACK, 100, &msg[0..7]);
    t.inject(base + 3, Some(our), ACK, 100, &msg[3..17]); // old + new
    assert_eq!(recv_bytes(&t.events()), &msg[..]);
    t.inject(base, Some(our), ACK, 100, &msg[..5]); // wholly old
    assert!(t.events().is_empty());
    assert!(t.s.stats().duplicate_segments >= 2);
    assert_eq!(t.s.stats().rx_queue_used, 0);
}

#[test]
fn established_receive_sequence_wraps_around() {
    let mut t = T::listening();
    let r = TcpRepr {
        src_port: PEER_PORT,
        dst_port: PORT,
        seq: SeqNum(u32::MAX - 4),
        ack: None,
        flags: SYN,
        window: 100,
        mss: None,
        window_scale: None,
        sack_permitted: false,
        payload_len: 0,
    };
    t.inject_repr(r, &[]);
    t.flush();
    let our = t.one_out().seq() + 1;
    let base = u32::MAX - 3;
    t.inject(base, Some(our), ACK, 100, &[]);
    let conn = match t.events().as_slice() {
        [TcpEvent::Knock { conn, .. }] => *conn,
        e => panic!("{e:?}"),
    };
    t.s.accept(conn, 1, &mut t.ev).unwrap();
    // The second piece, past the wrap, arrives first.
    t.inject(base.wrapping_add(6), Some(our), ACK, 100, b"ghijkl");
    assert!(t.events().is_empty());
    t.inject(base, Some(our), ACK, 100, b"abcdef");
    assert_eq!(recv_bytes(&t.events()), b"abcdefghijkl");
    t.flush();
    assert_eq!(t.one_out().ack(), base.wrapping_add(12));
}

#[test]
fn segment_refused_by_ip_layer_is_retransmitted() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.send(conn, &[TxBuf::from_static(b"retry me")]).unwrap();
    t.wire.fail = true;
    t.flush();
    assert_eq!(t.s.stats().segs_out_failed, 1);
    t.wire.fail = false;
    t.wait(Duration::from_millis(201));
    let o = t.one_out();
    assert_eq!((o.seq(), o.payload.as_slice()), (our, &b"retry me"[..]));
}

#[test]
fn closed_connection_behind_a_zero_window_gives_up() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.inject(PISS + 1, Some(our), ACK, 0, &[]);
    t.s.send(conn, &[TxBuf::from_static(b"never")]).unwrap();
    t.s.close(conn).unwrap();
    t.flush();
    for _ in 0..100 {
        t.wait(Duration::from_secs(10));
        // The peer keeps answering every probe with a zero window.
        if !t.out().is_empty() && t.s.conn_count() == 1 {
            t.inject(PISS + 1, Some(our), ACK, 0, &[]);
        }
    }
    assert_eq!(t.s.conn_count(), 0);
    let st = t.s.stats();
    assert!(st.window_probes >= 8);
    assert_eq!(st.rst_sent, 1);
    assert_eq!(st.fast_retransmits, 0, "answers to probes are not dup ACKs");
}

#[test]
fn delayed_ack_fires_after_timeout() {
    let mut t = T::listening();
    let (_conn, our) = t.established();
    t.inject(PISS + 1, Some(our), ACK, 100, b"one small segment");
    t.flush();
    assert!(t.out().is_empty(), "ACK is delayed");
    t.wait(Duration::from_micros(400));
    assert!(t.out().is_empty());
    t.wait(Duration::from_micros(200));
    assert_eq!(t.one_out().ack(), PISS + 1 + 17);
}

#[test]
fn second_full_segment_is_acked_at_once() {
    let mut t = T::listening();
    let (_conn, our) = t.established();
    let seg = vec![7u8; 1460];
    t.inject(PISS + 1, Some(our), ACK, 100, &seg);
    t.flush();
    assert!(t.out().is_empty());
    t.inject(PISS + 1461, Some(our), ACK, 100, &seg);
    t.flush();
    assert_eq!(t.one_out().ack(), PISS + 1 + 2920);
}

#[test]
fn reply_data_carries_the_ack() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.inject(PISS + 1, Some(our), ACK, 100, b"ping");
    t.s.send(conn, &[TxBuf::from_static(b"pong")]).unwrap();
    t.flush();
    let o = t.one_out();
    assert_eq!(o.payload, b"pong");
    assert_eq!((o.seq(), o.ack()), (our, PISS + 5));
    assert!(o.has(TcpFlags::PSH));
    t.wait(Duration::from_millis(1));
    assert!(t.out().is_empty(), "no separate delayed ACK");
}

#[test]
fn delayed_ack_rearmed_after_a_reply_waits_its_full_delay() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.inject(PISS + 1, Some(our), ACK, 100, b"ping");
    t.s.send(conn, &[TxBuf::from_static(b"pong")]).unwrap();
    t.flush();
    assert_eq!(t.one_out().ack(), PISS + 5, "the reply stops the timer");
    // The stopped timer's wheel entry (due 500 µs after "ping") is still
    // filed; the new delayed ACK must wait 500 µs after "more".
    t.wait(Duration::from_micros(300));
    t.inject(PISS + 5, Some(our + 4), ACK, 100, b"more");
    t.wait(Duration::from_micros(250));
    assert!(t.out().is_empty(), "not due before 500 µs after the data");
    t.wait(Duration::from_micros(200));
    assert!(t.out().is_empty());
    t.wait(Duration::from_micros(100));
    assert_eq!(t.one_out().ack(), PISS + 9);
}

#[test]
fn restarted_rexmit_timer_fires_at_the_later_deadline() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.send(
        conn,
        &[TxBuf::from_static(b"first"), TxBuf::from_static(b"second")],
    )
    .unwrap();
    t.flush();
    assert_eq!(t.one_out().payload, b"firstsecond");
    // A partial ACK at 150 ms restarts the RTO (200 ms) from then.
    t.wait(Duration::from_millis(150));
    t.inject(PISS + 1, Some(our + 5), ACK, 1024, &[]);
    t.flush();
    assert!(t.out().is_empty());
    t.wait(Duration::from_millis(100));
    assert!(t.out().is_empty(), "the first deadline (200 ms) has moved");
    t.wait(Duration::from_millis(99));
    assert!(t.out().is_empty());
    t.wait(Duration::from_millis(2));
    let o = t.one_out();
    assert_eq!((o.seq(), o.payload.as_slice()), (our + 5, &b"second"[..]));
    assert_eq!(t.s.stats().rto_timeouts, 1);
}

#[test]
fn request_reply_exchange_reuses_its_wheel_entries() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    let mut entries = None;
    for i in 0..50u32 {
        t.inject(PISS + 1 + 4 * i, Some(our + 4 * i), ACK, 100, b"ping");
        t.s.send(conn, &[TxBuf::from_static(b"pong")]).unwrap();
        t.flush();
        let o = t.one_out();
        assert_eq!((o.seq(), o.ack()), (our + 4 * i, PISS + 5 + 4 * i));
        t.wait(Duration::from_micros(20));
        let c = t.conn();
        assert!(c.rtx.at.is_some() && c.ack.at.is_none());
        // Restarting the RTO touches no wheel entry until it fires; the
        // delayed ACK, carried by the reply, is never filed.
        assert!(c.rtx.entry.is_some() && c.ack.entry.is_none(), "round {i}");
        assert!(
            entries.is_none() || entries == Some(c.rtx.entry),
            "round {i}"
        );
        entries = Some(c.rtx.entry);
    }
    assert!(t.out().is_empty(), "no stray delayed ACK");
    assert_eq!(t.s.stats().rto_timeouts, 0);
}

#[test]
fn established_rst_exact_resets_and_in_window_gets_challenge_ack() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.inject(PISS + 100, None, RST, 0, &[]);
    t.flush();
    let o = t.one_out();
    assert!(!o.has(RST));
    assert_eq!(o.ack(), PISS + 1, "challenge ACK");
    assert_eq!(t.s.stats().challenge_acks, 1);
    assert!(t.events().is_empty());
    t.inject(PISS + 1, Some(our), RST, 0, &[]);
    assert!(matches!(
        t.events().as_slice(),
        [TcpEvent::Dead {
            cookie: 7,
            reason: DeadReason::Reset,
            ..
        }]
    ));
    assert_eq!(t.s.state_of(conn), None);
}

#[test]
fn established_syn_gets_challenge_ack() {
    let mut t = T::listening();
    let (conn, _our) = t.established();
    t.inject(PISS + 50, None, SYN, 100, &[]);
    t.flush();
    assert_eq!(t.one_out().ack(), PISS + 1);
    assert_eq!(t.s.state_of(conn), Some("ESTABLISHED"));
}

#[test]
fn established_ack_of_unsent_data_is_answered_and_dropped() {
    let mut t = T::listening();
    let (_conn, our) = t.established();
    t.inject(PISS + 1, Some(our + 1000), ACK, 100, b"data");
    assert!(t.events().is_empty(), "segment dropped");
    t.flush();
    assert_eq!(t.one_out().ack(), PISS + 1);
}

#[test]
fn established_out_of_window_segment_gets_ack() {
    let mut t = T::listening();
    let (_conn, our) = t.established();
    t.inject(PISS + 1 + 10_000_000, Some(our), ACK, 100, b"far");
    t.inject(PISS - 50, Some(our), ACK, 100, b"old");
    t.flush();
    let outs = t.out();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].ack(), PISS + 1);
    let st = t.s.stats();
    assert_eq!((st.dropped_out_of_window, st.duplicate_segments), (1, 1));
}

#[test]
fn send_respects_send_buffer_and_sent_events_free_space() {
    let cfg = TcpConfig {
        send_buffer: 4000,
        ..test_config()
    };
    let mut t = T::new(cfg);
    t.s.listen(PORT).unwrap();
    let (conn, our) = t.established();
    let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let buf = TxBuf::from_vec(data.clone());
    assert_eq!(t.s.send(conn, std::slice::from_ref(&buf)).unwrap(), 4000);
    assert_eq!(t.s.send(conn, &[buf.slice(4000, 1000)]).unwrap(), 0);
    t.flush();
    let segs = t.out();
    // The peer's window is 1024 << 7: cwnd (10 segments) is not the limit.
    let lens: Vec<usize> = segs.iter().map(|s| s.payload.len()).collect();
    assert_eq!(lens, vec![1460, 1460, 1080]);
    let sent: Vec<u8> = segs.iter().flat_map(|s| s.payload.clone()).collect();
    assert_eq!(sent, data[..4000]);
    t.inject(PISS + 1, Some(our + 2920), ACK, 1024, &[]);
    match t.events().as_slice() {
        [TcpEvent::Sent {
            acked: 2920,
            cookie: 7,
            ..
        }] => {}
        e => panic!("{e:?}"),
    }
    assert_eq!(t.s.send(conn, &[buf.slice(4000, 1000)]).unwrap(), 1000);
    t.flush();
    let segs = t.out();
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].seq(), our + 4000);
    assert_eq!(segs[0].payload, data[4000..]);
}

#[test]
fn receive_window_closes_and_reopens_with_window_update() {
    let cfg = TcpConfig {
        recv_buffer: 4096,
        window_scale: 0,
        ..test_config()
    };
    let mut t = T::new(cfg);
    t.s.listen(PORT).unwrap();
    let (conn, our) = t.established();
    let chunk = vec![1u8; 1024];
    for i in 0..4 {
        t.inject(PISS + 1 + i * 1024, Some(our), ACK, 100, &chunk);
    }
    assert_eq!(recv_bytes(&t.events()).len(), 4096);
    t.flush();
    let o = t.one_out();
    assert_eq!((o.ack(), o.r.window), (PISS + 1 + 4096, 0), "window closed");
    // Beyond the window: dropped and re-ACKed.
    t.inject(PISS + 1 + 4096, Some(our), ACK, 100, b"more");
    assert!(t.events().is_empty());
    t.flush();
    assert_eq!(t.one_out().r.window, 0);
    // Releasing a little does not warrant an update (SWS avoidance)...
    t.s.recv_done(conn, 100).unwrap();
    t.flush();
    assert!(t.out().is_empty());
    // ...releasing an MSS worth does.
    t.s.recv_done(conn, 2000).unwrap();
    t.flush();
    let o = t.one_out();
    assert_eq!(o.r.window, 2100);
    assert_eq!(
        t.s.recv_done(conn, 5000),
        Err(TcpError::ReleaseTooLarge {
            len: 5000,
            held: 1996
        })
    );
}

#[test]
fn zero_window_probe_after_persist_timeout() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    // The peer closes its window.
    t.inject(PISS + 1, Some(our), ACK, 0, &[]);
    t.s.send(conn, &[TxBuf::from_static(b"blocked")]).unwrap();
    t.flush();
    assert!(t.out().is_empty(), "nothing fits a zero window");
    t.wait(Duration::from_millis(201));
    let probe = t.one_out();
    assert_eq!((probe.seq(), probe.payload.as_slice()), (our, &b"b"[..]));
    assert_eq!(t.s.stats().window_probes, 1);
    // The peer answers: still zero. The next probe comes later (backoff).
    t.inject(PISS + 1, Some(our), ACK, 0, &[]);
    t.wait(Duration::from_millis(350));
    assert!(t.out().is_empty());
    t.wait(Duration::from_millis(60));
    assert_eq!(t.one_out().seq(), our);
    // The window opens (and the probe byte was taken): the rest flows.
    t.inject(PISS + 1, Some(our + 1), ACK, 100, &[]);
    t.flush();
    let o = t.one_out();
    assert_eq!((o.seq(), o.payload.as_slice()), (our + 1, &b"locked"[..]));
}

#[test]
fn three_dup_acks_trigger_fast_retransmit() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    let data: Vec<u8> = (0..14600u32).map(|i| (i * 7) as u8).collect();
    t.s.send(conn, &[TxBuf::from_vec(data.clone())]).unwrap();
    t.flush();
    assert_eq!(t.out().len(), 10, "initial window");
    // Segment 1 lost; segments 2..4 draw duplicate ACKs.
    for _ in 0..2 {
        t.inject(PISS + 1, Some(our), ACK, 1024, &[]);
    }
    t.flush();
    assert!(t.out().is_empty());
    t.inject(PISS + 1, Some(our), ACK, 1024, &[]);
    t.flush();
    let rx = t.one_out();
    assert_eq!(rx.seq(), our);
    assert_eq!(rx.payload, data[..1460]);
    let st = t.s.stats();
    assert_eq!((st.fast_retransmits, st.retransmits), (1, 1));
    let c = t.conn();
    assert_eq!(c.ssthresh, 7300);
    assert_eq!(c.cwnd, 7300 + 3 * 1460);
    // NewReno: a partial ACK (segment 3 was lost too) retransmits at once.
    t.inject(PISS + 1, Some(our + 2920), ACK, 1024, &[]);
    t.flush();
    let rx = t.one_out();
    assert_eq!(rx.seq(), our + 2920);
    // A full ACK ends recovery with cwnd = ssthresh-bounded.
    t.inject(PISS + 1, Some(our + 14600), ACK, 1024, &[]);
    let c = t.conn();
    assert_eq!(c.cwnd, 2920, "min(ssthresh, max(FlightSize, SMSS) + SMSS)");
    assert!(!c.has(super::conn::flag::RECOVERY));
}

#[test]
fn rto_backs_off_exponentially() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.send(conn, &[TxBuf::from_static(b"lost")]).unwrap();
    t.flush();
    assert_eq!(t.one_out().seq(), our);
    let mut times = Vec::new();
    let start = t.now;
    for _ in 0..16_000 {
        t.wait(Duration::from_millis(1));
        for o in t.out() {
            assert_eq!(o.seq(), our);
            times.push((t.now - start).as_millis());
        }
    }
    // The handshake's RTT sample was ~0, so RTO = rto_min (200 ms), then
    // doubling; each expiry is seen at the next 1 ms step.
    let gaps: Vec<u128> = times
        .iter()
        .scan(0, |prev, &t| {
            let g = t - *prev;
            *prev = t;
            Some(g)
        })
        .collect();
    for (g, want) in gaps.iter().zip([200u128, 400, 800, 1600, 3200, 6400]) {
        assert!(*g == want || *g == want + 1, "gaps {gaps:?}");
    }
    assert_eq!(gaps.len(), 6, "gaps {gaps:?}");
    assert_eq!(t.s.stats().rto_timeouts, 6);
    assert_eq!(t.conn().cwnd, 1460, "loss window");
}

#[test]
fn rto_max_retries_reports_timed_out() {
    let mut t = T::listening();
    let (conn, _our) = t.established();
    t.s.send(conn, &[TxBuf::from_static(b"into the void")])
        .unwrap();
    t.flush();
    for _ in 0..100 {
        t.wait(Duration::from_secs(10));
    }
    assert_eq!(t.out().len(), 1 + 8, "original and max_retries copies");
    assert!(matches!(
        t.events().as_slice(),
        [TcpEvent::Dead {
            reason: DeadReason::TimedOut,
            ..
        }]
    ));
    assert_eq!(t.s.conn_count(), 0);
    assert_eq!(t.s.stats().tx_queue_used, 0);
}

#[test]
fn rtt_samples_drive_the_rto() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    for i in 0..20u32 {
        t.s.send(conn, &[TxBuf::from_static(b"0123456789")])
            .unwrap();
        t.flush();
        t.out();
        t.now = t.now + Duration::from_millis(300);
        t.inject(PISS + 1, Some(our + 10 * (i + 1)), ACK, 1024, &[]);
    }
    let c = t.conn();
    assert!(c.srtt_us > 250_000 && c.srtt_us <= 300_000, "{}", c.srtt_us);
    assert!(c.rto_us >= c.srtt_us, "{}", c.rto_us);
}

#[test]
fn slow_start_then_congestion_avoidance() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.send(conn, &[TxBuf::from_vec(vec![0; 60_000])]).unwrap();
    t.flush();
    t.out();
    assert_eq!(t.conn().cwnd, 14600);
    t.inject(PISS + 1, Some(our + 1460), ACK, 1024, &[]);
    assert_eq!(t.conn().cwnd, 14600 + 1460, "slow start: +SMSS per ACK");
    t.s.conn_mut_by_tuple(&tuple()).unwrap().ssthresh = 10_000;
    t.inject(PISS + 1, Some(our + 2920), ACK, 1024, &[]);
    assert_eq!(
        t.conn().cwnd,
        16060 + 1460 * 1460 / 16060,
        "congestion avoidance: +SMSS*SMSS/cwnd"
    );
}

// ------------------------------------------------------------ CLOSING

#[test]
fn fin_wait_1_to_fin_wait_2_to_time_wait() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.send(conn, &[TxBuf::from_static(b"bye")]).unwrap();
    t.s.close(conn).unwrap();
    assert_eq!(
        t.s.send(conn, &[]),
        Err(TcpError::InvalidState {
            call: "send",
            state: "FIN-WAIT-1"
        })
    );
    t.flush();
    let o = t.one_out();
    assert!(o.has(FIN), "FIN rides on the last data segment");
    assert_eq!(o.payload, b"bye");
    t.inject(PISS + 1, Some(our + 4), ACK, 100, &[]);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("FIN-WAIT-2"));
    assert!(t.events().is_empty(), "no events after close");
    // Data after close is acknowledged and dropped.
    t.inject(PISS + 1, Some(our + 4), FIN, 100, b"late");
    assert!(t.events().is_empty());
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("TIME-WAIT"));
    t.flush();
    assert_eq!(t.one_out().ack(), PISS + 6);
    t.wait(Duration::from_millis(1999));
    assert_eq!(t.s.conn_count(), 1);
    t.wait(Duration::from_millis(2));
    assert_eq!(t.s.conn_count(), 0, "2 MSL elapsed");
}

#[test]
fn fin_wait_2_times_out_without_peer_fin() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.close(conn).unwrap();
    t.flush();
    assert!(t.one_out().has(FIN));
    t.inject(PISS + 1, Some(our + 1), ACK, 100, &[]);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("FIN-WAIT-2"));
    t.wait(Duration::from_secs(6));
    assert_eq!(t.s.conn_count(), 0);
}

#[test]
fn close_wait_to_last_ack_to_closed() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.inject(PISS + 1, Some(our), FIN, 100, b"last words");
    let ev = t.events();
    assert_eq!(recv_bytes(&ev), b"last words");
    assert!(matches!(
        ev.last(),
        Some(TcpEvent::Dead {
            reason: DeadReason::PeerClosed,
            ..
        })
    ));
    assert_eq!(t.s.state_of(conn), Some("CLOSE-WAIT"));
    t.flush();
    assert_eq!(t.one_out().ack(), PISS + 12, "FIN acked at once");
    // Still usable for sending.
    t.s.send(conn, &[TxBuf::from_static(b"reply")]).unwrap();
    t.s.close(conn).unwrap();
    t.flush();
    let o = t.one_out();
    assert!(o.has(FIN));
    assert_eq!(o.payload, b"reply");
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("LAST-ACK"));
    t.inject(PISS + 12, Some(our + 6), ACK, 100, &[]);
    assert_eq!(t.s.conn_count(), 0, "no TIME-WAIT for the passive closer");
    assert!(t.events().is_empty());
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.close(conn).unwrap();
    t.flush();
    let fin = t.one_out();
    assert!(fin.has(FIN));
    // The peer's FIN crosses ours (it has not seen our FIN yet).
    t.inject(PISS + 1, Some(our), FIN, 100, &[]);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("CLOSING"));
    t.flush();
    assert_eq!(t.one_out().ack(), PISS + 2);
    t.inject(PISS + 2, Some(our + 1), ACK, 100, &[]);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("TIME-WAIT"));
    t.wait(Duration::from_secs(3));
    assert_eq!(t.s.conn_count(), 0);
}

#[test]
fn fin_is_retransmitted_until_acked() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.close(conn).unwrap();
    t.flush();
    assert!(t.one_out().has(FIN));
    t.wait(Duration::from_millis(210));
    let again = t.one_out();
    assert!(again.has(FIN));
    assert_eq!(again.seq(), our);
}

#[test]
fn time_wait_reacks_retransmitted_fin() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.close(conn).unwrap();
    t.flush();
    t.out();
    t.inject(PISS + 1, Some(our + 1), FIN, 100, &[]);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("TIME-WAIT"));
    t.flush();
    t.out();
    t.inject(PISS + 1, Some(our + 1), FIN, 100, &[]);
    t.flush();
    assert_eq!(t.one_out().ack(), PISS + 2);
    // An RST does not cut TIME-WAIT short (RFC 1337).
    t.inject(PISS + 2, None, RST, 0, &[]);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("TIME-WAIT"));
}

#[test]
fn time_wait_accepts_a_new_syn_with_higher_sequence() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.close(conn).unwrap();
    t.flush();
    t.out();
    t.inject(PISS + 1, Some(our + 1), FIN, 100, &[]);
    t.flush();
    t.out();
    t.inject(PISS + 100_000, None, SYN, 100, &[]);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("SYN-RECEIVED"));
}

#[test]
fn abort_sends_rst_and_invalidates_handle() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.abort(conn).unwrap();
    t.flush();
    let o = t.one_out();
    assert!(o.has(RST));
    assert_eq!((o.seq(), o.ack()), (our, PISS + 1));
    assert_eq!(t.s.abort(conn), Err(TcpError::InvalidConn));
    assert_eq!(t.s.close(conn), Err(TcpError::InvalidConn));
    assert!(t.events().is_empty());
}

#[test]
fn connection_state_fits_in_256_bytes() {
    let size = std::mem::size_of::<Conn>();
    eprintln!("size_of::<Conn>() = {size} bytes");
    assert!(size <= 256, "Conn is {size} bytes");
}

// ------------------------------------------------- HEADER PREDICTION

#[test]
fn header_prediction_takes_in_order_data_and_new_acks() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    for i in 0..10u32 {
        t.inject(PISS + 1 + 4 * i, Some(our + 4 * i), ACK, 1024, b"ping");
        t.s.send(conn, &[TxBuf::from_static(b"pong")]).unwrap();
        t.flush();
        assert_eq!(t.one_out().ack(), PISS + 5 + 4 * i);
    }
    assert_eq!(
        t.s.stats().segs_predicted,
        10,
        "the window (1024 << 7) is unchanged"
    );
    // A pure ACK of new data is predicted too.
    t.inject(PISS + 41, Some(our + 40), ACK, 1024, &[]);
    assert_eq!(t.s.stats().segs_predicted, 11);
    assert_eq!(t.conn().snd_una.0, our + 40);
}

#[test]
fn header_prediction_skips_segments_with_surprises() {
    /// An established connection (window 1024 << 7 from the peer) with 10
    /// bytes in flight; returns it and our first data sequence number.
    fn setup(recv_buffer: u32) -> (T, u32) {
        let mut t = T::new(TcpConfig {
            recv_buffer,
            ..test_config()
        });
        t.s.listen(PORT).unwrap();
        let (conn, our) = t.established();
        t.s.send(conn, &[TxBuf::from_static(b"0123456789")])
            .unwrap();
        t.flush();
        t.out();
        (t, our)
    }
    let p = PISS + 1;
    let big = test_config().recv_buffer;
    /// Case, receive buffer, seq, ack offset, flags, window, payload.
    type Case<'a> = (&'a str, u32, u32, u32, TcpFlags, u16, &'a [u8]);
    let cases: [Case; 11] = [
        ("FIN", big, p, 1, FIN, 1024, b"x"),
        ("URG", big, p, 1, TcpFlags::URG, 1024, b"x"),
        ("out of order", big, p + 10, 1, ACK, 1024, b"x"),
        ("old data", big, p - 5, 1, ACK, 1024, b"x"),
        ("window grows", big, p, 1, ACK, 1100, b"x"),
        ("zero window", big, p, 1, ACK, 0, b"x"),
        ("ACK of unsent data", big, p, 11, ACK, 1024, b"x"),
        ("duplicate ACK", big, p, 0, ACK, 1024, b""),
        ("beyond the window", 1000, p, 1, ACK, 1024, &[0; 1200]),
        ("in order", big, p, 1, ACK, 1024, b"x"),
        ("in order, window shrinks", big, p, 1, ACK, 1000, b"x"),
    ];
    for (what, recv_buffer, seq, ack, flags, window, data) in cases {
        let (mut t, our) = setup(recv_buffer);
        t.inject(seq, Some(our + ack), flags, window, data);
        let want = u64::from(what.starts_with("in order") || what == "window grows");
        assert_eq!(t.s.stats().segs_predicted, want, "{what}");
    }
    // With out-of-order data held, even an in-order segment takes the
    // full path (it fills the gap).
    let (mut t, our) = setup(big);
    t.inject(p + 1, Some(our + 10), ACK, 1024, b"y");
    t.inject(p, Some(our + 10), ACK, 1024, b"x");
    assert_eq!(t.s.stats().segs_predicted, 0);
    assert_eq!(recv_bytes(&t.events()), b"xy");
}

/// The same seeded mix of segments, sends, releases and waits through a
/// stack with header prediction and one without: identical segments,
/// events and connection state after every step.
#[test]
fn header_prediction_matches_the_full_path() {
    fn sig(ev: Vec<TcpEvent>) -> Vec<String> {
        ev.into_iter()
            .map(|e| match e {
                TcpEvent::Recv { conn, data, .. } => format!("Recv {conn:?} {:?}", data.data()),
                e => format!("{e:?}"),
            })
            .collect()
    }
    for seed in 1..=8u32 {
        let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
        let mut rnd = move |n: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % n
        };
        let mut a = T::listening();
        let mut b = T::listening();
        b.s.set_header_prediction(false);
        let (ca, our) = a.established();
        let (cb, _) = b.established();
        let (mut pseq, mut acked, mut sent_hi, mut window) = (PISS + 1, our, our, 1024u16);
        let mut held = 0usize;
        let payload = vec![0x5au8; 3000];
        for step in 0..400 {
            match rnd(10) {
                0 | 1 => {
                    let n = 1 + rnd(3000) as usize;
                    let buf = TxBuf::from_vec(payload[..n].to_vec());
                    assert_eq!(
                        a.s.send(ca, std::slice::from_ref(&buf)),
                        b.s.send(cb, &[buf])
                    );
                }
                2..=5 => {
                    // Mostly in order, sometimes a gap, an old segment or
                    // a window change; ACKs move forward within what we
                    // sent.
                    let len = [0, 1, 64, 700, 1460][rnd(5) as usize];
                    let seq = match rnd(12) {
                        0 => pseq + 100,
                        1 => pseq.wrapping_sub(len + 1),
                        _ => pseq,
                    };
                    if rnd(8) == 0 {
                        window = [0, 512, 1024, 4096][rnd(4) as usize];
                    }
                    if sent_hi > acked && rnd(3) != 0 {
                        acked = acked + 1 + rnd(sent_hi - acked);
                    }
                    let data = &payload[..len as usize];
                    a.inject(seq, Some(acked), ACK, window, data);
                    b.inject(seq, Some(acked), ACK, window, data);
                    if seq == pseq {
                        pseq += len;
                    }
                }
                6 => {
                    let d = Duration::from_micros(100 * u64::from(1 + rnd(3000)));
                    a.now = a.now + d;
                    b.now = b.now + d;
                    a.s.poll(a.now, &mut a.wire, &mut a.ev);
                    b.s.poll(b.now, &mut b.wire, &mut b.ev);
                }
                _ => {
                    if held > 0 {
                        let n = 1 + rnd(held as u32) as usize;
                        assert_eq!(a.s.recv_done(ca, n), b.s.recv_done(cb, n));
                    }
                }
            }
            a.flush();
            b.flush();
            let (oa, ob) = (
                std::mem::take(&mut a.wire.out),
                std::mem::take(&mut b.wire.out),
            );
            assert_eq!(oa, ob, "seed {seed} step {step}: segments");
            for o in &oa {
                let p = TcpPacket::new_checked(&o[..]).unwrap();
                let end = p.seq_number() + p.payload().len() as u32;
                if end > SeqNum(sent_hi) {
                    sent_hi = end.0;
                }
            }
            let (ea, eb) = (sig(a.events()), sig(b.events()));
            assert_eq!(ea, eb, "seed {seed} step {step}: events");
            held =
                a.s.conn_by_tuple(&tuple())
                    .map_or(0, |c| c.rx_held as usize);
            assert_eq!(
                format!("{:?}", a.s.conn_by_tuple(&tuple())),
                format!("{:?}", b.s.conn_by_tuple(&tuple())),
                "seed {seed} step {step}: connection"
            );
        }
        assert!(
            a.s.stats().segs_predicted > 20,
            "seed {seed}: {:?}",
            a.s.stats()
        );
        assert_eq!(b.s.stats().segs_predicted, 0);
        let (mut sa, mut sb) = (a.s.stats(), b.s.stats());
        sa.segs_predicted = 0;
        sb.segs_predicted = 0;
        assert_eq!(sa, sb, "seed {seed}: counters");
    }
}

// ------------------------------------------------------------- MIGRATION

impl T {
    /// A fresh stack with this one's configuration and another secret,
    /// listening on [`PORT`] if `listen`.
    fn fresh_stack(&self, secret: u8, listen: bool) -> TcpStack {
        let mut s = TcpStack::new(self.s.config().clone(), self.now, [secret; 16]);
        if listen {
            s.listen(PORT).unwrap();
        }
        s
    }

    /// Exports the only connection, checking the source gives it up.
    fn export_only(&mut self) -> (ConnId, MovedConn) {
        let mut all = Vec::new();
        self.s.connections(&mut all);
        let [(id, tup)] = all[..] else {
            panic!("expected one connection, got {all:?}")
        };
        assert_eq!(tup, tuple());
        let m = self.s.export(self.now, id).unwrap();
        assert_eq!(m.tuple(), tuple());
        assert_eq!(self.s.conn_count(), 0);
        assert_eq!(self.s.stats().half_open, 0);
        assert_eq!(
            (self.s.stats().tx_queue_used, self.s.stats().rx_queue_used),
            (0, 0)
        );
        (id, m)
    }

    /// Moves the only connection into `target`, which replaces `self.s`.
    /// Returns the source stack and the new handle.
    fn move_to(&mut self, mut target: TcpStack) -> (TcpStack, ConnId) {
        let (_, m) = self.export_only();
        let id = target
            .import(self.now, m, &self.pool)
            .unwrap_or_else(|(e, _)| panic!("import: {e}"));
        (std::mem::replace(&mut self.s, target), id)
    }
}

#[test]
fn moved_syn_received_completes_its_handshake_on_the_target() {
    let mut t = T::listening();
    t.inject_syn(Some(1400), Some(7));
    t.flush();
    let synack = t.one_out();
    assert_eq!(t.s.stats().half_open, 1);
    let target = t.fresh_stack(1, true);
    let (src, _) = t.move_to(target);
    assert_eq!(src.stats().half_open, 0);
    assert_eq!(t.s.stats().half_open, 1);
    t.flush();
    assert!(t.out().is_empty(), "the SYN-ACK is not due again yet");
    // The SYN-ACK's retransmission timer travelled.
    t.wait(Duration::from_millis(1001));
    let again = t.one_out();
    assert!(again.has(SYN));
    assert_eq!((again.seq(), again.ack()), (synack.seq(), PISS + 1));
    t.inject(PISS + 1, Some(synack.seq() + 1), ACK, 512, &[]);
    let conn = match t.events().as_slice() {
        [TcpEvent::Knock { conn, .. }] => *conn,
        e => panic!("expected a knock, got {e:?}"),
    };
    assert_eq!(t.s.stats().half_open, 0);
    t.s.accept(conn, 5, &mut t.ev).unwrap();
    assert_eq!(t.conn().snd_mss, 1400);
}

#[test]
fn moved_syn_sent_connects_on_the_target() {
    let mut t = T::new(test_config());
    let (_, syn) = connect(&mut t);
    let target = t.fresh_stack(2, false);
    let (_, conn) = t.move_to(target);
    t.inject_repr(
        TcpRepr {
            src_port: PEER_PORT,
            dst_port: PORT,
            seq: SeqNum(PISS),
            ack: Some(SeqNum(syn.seq() + 1)),
            flags: SYN,
            window: 100,
            mss: Some(1000),
            window_scale: Some(2),
            sack_permitted: false,
            payload_len: 0,
        },
        &[],
    );
    match t.events().as_slice() {
        [TcpEvent::Connected {
            conn: c,
            cookie: 99,
            result: Ok(()),
        }] => assert_eq!(*c, conn),
        e => panic!("{e:?}"),
    }
    t.flush();
    assert_eq!(t.one_out().ack(), PISS + 1);
}

#[test]
fn moved_syn_sent_before_its_first_flush_sends_the_syn_from_the_target() {
    let mut t = T::new(test_config());
    let conn = t.s.connect(t.now, tuple(), 3).unwrap();
    let m = t.s.export(t.now, conn).unwrap();
    assert_eq!(m.state(), "SYN-SENT");
    t.flush();
    assert!(t.out().is_empty(), "the source forgot the connection");
    let mut target = t.fresh_stack(3, false);
    target.import(t.now, m, &t.pool).unwrap();
    t.s = target;
    t.flush();
    let syn = t.one_out();
    assert!(syn.has(SYN) && syn.r.ack.is_none());
}

#[test]
fn moved_established_keeps_unacked_data_and_its_delayed_ack() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.send(
        conn,
        &[TxBuf::from_static(b"hello "), TxBuf::from_static(b"world")],
    )
    .unwrap();
    t.flush();
    assert_eq!(t.one_out().payload, b"hello world");
    // The peer acknowledges part of it and sends data of its own: our ACK
    // is delayed.
    t.inject(PISS + 1, Some(our + 3), ACK, 100, b"abc");
    assert!(matches!(
        t.events()[..],
        [TcpEvent::Recv { .. }, TcpEvent::Sent { acked: 3, .. }]
            | [TcpEvent::Sent { acked: 3, .. }, TcpEvent::Recv { .. }]
    ));
    t.flush();
    assert!(t.out().is_empty(), "ACK delayed");
    t.s.recv_done(conn, 3).unwrap();
    let before = t.conn().clone();
    let target = t.fresh_stack(4, true);
    let (_, conn) = t.move_to(target);
    let after = t.conn();
    assert_eq!(
        (
            after.snd_una,
            after.snd_nxt,
            after.snd_max,
            after.rcv_nxt,
            after.rcv_acked
        ),
        (
            before.snd_una,
            before.snd_nxt,
            before.snd_max,
            before.rcv_nxt,
            before.rcv_acked
        )
    );
    assert_eq!(
        (
            after.cwnd,
            after.ssthresh,
            after.srtt_us,
            after.rttvar_us,
            after.rto_us
        ),
        (
            before.cwnd,
            before.ssthresh,
            before.srtt_us,
            before.rttvar_us,
            before.rto_us
        )
    );
    assert_eq!((after.tx_queued, after.cookie), (8, 7));
    t.flush();
    assert!(t.out().is_empty(), "still delayed on the target");
    t.wait(Duration::from_micros(600));
    assert_eq!(
        t.one_out().ack(),
        PISS + 4,
        "the delayed ACK fired on the target"
    );
    // The unacknowledged bytes are retransmitted from the target.
    t.wait(Duration::from_millis(300));
    let re = t.one_out();
    assert_eq!(
        (re.seq(), re.payload.as_slice()),
        (our + 3, &b"lo world"[..])
    );
    t.inject(PISS + 4, Some(our + 11), ACK, 100, &[]);
    match t.events().as_slice() {
        [TcpEvent::Sent {
            conn: c,
            cookie: 7,
            acked: 8,
        }] => assert_eq!(*c, conn),
        e => panic!("{e:?}"),
    }
    t.s.send(conn, &[TxBuf::from_static(b"!")]).unwrap();
    t.flush();
    assert_eq!(t.one_out().seq(), our + 11);
}

#[test]
fn moved_before_accept_carries_received_data_and_fin() {
    let mut t = T::listening();
    let (_, our) = t.knocked(Some(1460), Some(7), 512);
    let mut sent = Vec::new();
    for i in 0..3u32 {
        let chunk = vec![i as u8 + 1; 1000];
        t.inject(PISS + 1 + i * 1000, Some(our), ACK, 512, &chunk);
        sent.extend_from_slice(&chunk);
    }
    t.inject(PISS + 3001, Some(our), FIN, 512, &[]);
    t.flush();
    t.out();
    let (_, m) = t.export_only();
    assert!(m.awaiting_accept());
    assert_eq!((m.rx_pending_bytes(), m.cookie()), (3000, 0));
    // The target must listen on the port to take it.
    let mut target = t.fresh_stack(5, false);
    let (e, m) = target.import(t.now, m, &t.pool).unwrap_err();
    assert_eq!(e, TcpError::NotListening { port: PORT });
    target.listen(PORT).unwrap();
    let conn = target.import(t.now, m, &t.pool).unwrap();
    t.s = target;
    assert_eq!(t.s.stats().rx_queue_used, 2, "3000 bytes in two buffers");
    t.s.accept(conn, 42, &mut t.ev).unwrap();
    let ev = t.events();
    assert_eq!(recv_bytes(&ev), sent);
    assert!(matches!(
        ev.last(),
        Some(TcpEvent::Dead {
            cookie: 42,
            reason: DeadReason::PeerClosed,
            ..
        })
    ));
    assert_eq!(t.s.stats().rx_queue_used, 0);
}

#[test]
fn moved_backlog_entry_frees_the_source_backlog_and_fills_the_target_one() {
    let cfg = TcpConfig {
        backlog: 1,
        ..test_config()
    };
    let mut t = T::new(cfg);
    t.s.listen(PORT).unwrap();
    t.knocked(None, None, 512);
    let (_, m) = t.export_only();
    // The source's backlog slot is free again: a new SYN is admitted.
    t.inject_port(PORT, 7000, None, SYN, 100, &[]);
    assert_eq!(t.s.conn_count(), 1);
    // A target whose only backlog slot holds another peer's connection.
    let mut u = T::new(t.s.config().clone());
    u.s.listen(PORT).unwrap();
    let from = |seq: u32, ack: Option<u32>, flags: TcpFlags| TcpRepr {
        src_port: PEER_PORT + 1,
        dst_port: PORT,
        seq: SeqNum(seq),
        ack: ack.map(SeqNum),
        flags,
        window: 512,
        mss: None,
        window_scale: None,
        sack_permitted: false,
        payload_len: 0,
    };
    u.inject_repr(from(PISS, None, SYN), &[]);
    u.flush();
    let synack = u.one_out();
    u.inject_repr(from(PISS + 1, Some(synack.seq() + 1), ACK), &[]);
    assert!(matches!(u.events()[..], [TcpEvent::Knock { .. }]));
    let (e, m) = u.s.import(t.now, m, &t.pool).unwrap_err();
    assert_eq!(e, TcpError::BacklogFull { port: PORT, max: 1 });
    assert_eq!(u.s.conn_count(), 1, "nothing changed");
    assert!(m.awaiting_accept());
}

#[test]
fn moved_fin_wait_1_then_fin_wait_2_times_out_on_a_third_stack() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.send(conn, &[TxBuf::from_static(b"bye")]).unwrap();
    t.s.close(conn).unwrap();
    t.flush();
    assert!(t.one_out().has(FIN));
    let target = t.fresh_stack(8, false);
    t.move_to(target);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("FIN-WAIT-1"));
    t.wait(Duration::from_millis(300));
    let re = t.one_out();
    assert!(re.has(FIN), "FIN retransmitted by the target");
    assert_eq!(re.payload, b"bye");
    t.inject(PISS + 1, Some(our + 4), ACK, 100, &[]);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("FIN-WAIT-2"));
    let target = t.fresh_stack(9, false);
    t.move_to(target);
    t.wait(Duration::from_millis(4990));
    assert_eq!(t.s.conn_count(), 1);
    t.wait(Duration::from_millis(20));
    assert_eq!(t.s.conn_count(), 0, "the FIN-WAIT-2 deadline travelled");
    assert!(t.events().is_empty());
}

#[test]
fn moved_close_wait_and_last_ack_finish_on_the_target() {
    let mut t = T::listening();
    let (_, our) = t.established();
    t.inject(PISS + 1, Some(our), FIN, 100, b"last words");
    t.events();
    t.flush();
    t.out();
    let target = t.fresh_stack(10, true);
    let (mut src, conn) = t.move_to(target);
    assert_eq!(t.s.state_of(conn), Some("CLOSE-WAIT"));
    // The unreleased "last words" count as released on the target; the
    // source treats a late release as a stale handle.
    assert_eq!(src.recv_done(conn, 10), Err(TcpError::InvalidConn));
    assert_eq!(t.conn().rx_held, 0);
    t.s.send(conn, &[TxBuf::from_static(b"reply")]).unwrap();
    t.s.close(conn).unwrap();
    t.flush();
    let o = t.one_out();
    assert!(o.has(FIN) && o.payload == b"reply");
    let target = t.fresh_stack(11, true);
    t.move_to(target);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("LAST-ACK"));
    t.inject(PISS + 12, Some(our + 6), ACK, 100, &[]);
    assert_eq!(t.s.conn_count(), 0);
}

#[test]
fn moved_time_wait_expires_on_the_target() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.s.close(conn).unwrap();
    t.flush();
    t.out();
    t.inject(PISS + 1, Some(our + 1), FIN, 100, &[]);
    assert_eq!(t.s.state_by_tuple(&tuple()), Some("TIME-WAIT"));
    t.flush();
    t.out();
    t.wait(Duration::from_millis(1000));
    let target = t.fresh_stack(12, false);
    t.move_to(target);
    // A retransmitted FIN is re-acknowledged by the target.
    t.inject(PISS + 1, Some(our + 1), FIN, 100, &[]);
    t.flush();
    assert_eq!(t.one_out().ack(), PISS + 2);
    t.wait(Duration::from_millis(999));
    assert_eq!(t.s.conn_count(), 1);
    t.wait(Duration::from_millis(2));
    assert_eq!(
        t.s.conn_count(),
        0,
        "2 MSL from entering TIME-WAIT on the source"
    );
}

#[test]
fn moved_zero_window_keeps_probing_from_the_target() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    t.inject(PISS + 1, Some(our), ACK, 0, &[]);
    t.s.send(conn, &[TxBuf::from_static(b"blocked")]).unwrap();
    t.flush();
    assert!(t.out().is_empty());
    t.wait(Duration::from_millis(100));
    let target = t.fresh_stack(13, true);
    t.move_to(target);
    t.wait(Duration::from_millis(99));
    let early = t.out();
    assert!(
        early.is_empty(),
        "the persist deadline travelled: {early:?}"
    );
    t.wait(Duration::from_millis(2));
    let probe = t.one_out();
    assert_eq!((probe.seq(), probe.payload.as_slice()), (our, &b"b"[..]));
    t.inject(PISS + 1, Some(our + 1), ACK, 100, &[]);
    t.flush();
    let o = t.one_out();
    assert_eq!((o.seq(), o.payload.as_slice()), (our + 1, &b"locked"[..]));
}

#[test]
fn moved_closed_window_reopens_on_the_target() {
    let cfg = TcpConfig {
        recv_buffer: 4096,
        window_scale: 0,
        ..test_config()
    };
    let mut t = T::new(cfg);
    t.s.listen(PORT).unwrap();
    let (_, our) = t.established();
    for i in 0..4 {
        t.inject(PISS + 1 + i * 1024, Some(our), ACK, 100, &[1u8; 1024]);
    }
    let held = t.events();
    assert_eq!(recv_bytes(&held).len(), 4096);
    t.flush();
    assert_eq!(t.one_out().r.window, 0);
    let (_, m) = t.export_only();
    assert_eq!(m.rx_released(), 4096);
    let mut target = t.fresh_stack(14, true);
    target.import(t.now, m, &t.pool).unwrap();
    t.s = target;
    t.flush();
    let o = t.one_out();
    assert_eq!((o.ack(), o.r.window), (PISS + 4097, 4096), "window update");
    drop(held);
}

#[test]
fn exported_handle_is_stale_and_its_segments_steer_away() {
    let mut t = T::listening();
    let (conn, our) = t.established();
    let (old, m) = t.export_only();
    assert_eq!(old, conn);
    assert_eq!(
        t.s.send(conn, &[TxBuf::from_static(b"x")]),
        Err(TcpError::InvalidConn)
    );
    assert_eq!(t.s.recv_done(conn, 0), Err(TcpError::InvalidConn));
    assert_eq!(t.s.close(conn), Err(TcpError::InvalidConn));
    assert_eq!(t.s.abort(conn), Err(TcpError::InvalidConn));
    assert_eq!(t.s.export(t.now, conn).unwrap_err(), TcpError::InvalidConn);
    let st = t.s.stats();
    assert_eq!(
        (st.conns_exported, st.conns_active, st.conns_closed),
        (1, 0, 0)
    );
    // A segment for the moved tuple: handed back untouched when another
    // core owns its flow group...
    let r = TcpRepr {
        src_port: PEER_PORT,
        dst_port: PORT,
        seq: SeqNum(PISS + 1),
        ack: Some(SeqNum(our)),
        flags: ACK,
        window: 100,
        mss: None,
        window_scale: None,
        sack_permitted: false,
        payload_len: 4,
    };
    let mut bytes = vec![0u8; r.header_len() + 4];
    bytes[r.header_len()..].copy_from_slice(b"data");
    r.emit(&mut TcpPacket::new_unchecked(&mut bytes[..]), PEER, US);
    let mut seg = t.pool.alloc().unwrap();
    assert!(seg.extend_from_slice(&bytes));
    let mut asked = Vec::new();
    let back =
        t.s.input_steered(
            t.now,
            PEER,
            US,
            seg,
            &mut t.wire,
            &mut t.ev,
            |tu: &FourTuple| {
                asked.push(*tu);
                false
            },
        )
        .expect("handed back");
    assert_eq!(back.data(), &bytes[..]);
    assert_eq!(asked, [tuple()]);
    assert_eq!(t.s.stats().steered_away, 1);
    t.flush();
    assert!(t.out().is_empty() && t.events().is_empty());
    // ...and answered by RST, as before, when it is ours.
    let back = t.s.input_steered(
        t.now,
        PEER,
        US,
        back,
        &mut t.wire,
        &mut t.ev,
        |_: &FourTuple| true,
    );
    assert!(back.is_none());
    let rst = t.one_out();
    assert!(rst.has(RST));
    assert_eq!(rst.seq(), our);
    // The moved connection lands elsewhere and works there.
    let mut target = t.fresh_stack(15, true);
    let id = target.import(t.now, m, &t.pool).unwrap();
    t.s = target;
    t.inject(PISS + 1, Some(our), ACK, 100, b"data");
    match t.events().as_slice() {
        [TcpEvent::Recv {
            conn: c,
            cookie: 7,
            data,
        }] => {
            assert_eq!((*c, data.data()), (id, &b"data"[..]))
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn segment_of_a_live_connection_is_never_steered_away() {
    let mut t = T::listening();
    let (_, our) = t.established();
    let r = TcpRepr {
        src_port: PEER_PORT,
        dst_port: PORT,
        seq: SeqNum(PISS + 1),
        ack: Some(SeqNum(our)),
        flags: ACK,
        window: 100,
        mss: None,
        window_scale: None,
        sack_permitted: false,
        payload_len: 2,
    };
    let mut bytes = vec![0u8; r.header_len() + 2];
    bytes[r.header_len()..].copy_from_slice(b"hi");
    r.emit(&mut TcpPacket::new_unchecked(&mut bytes[..]), PEER, US);
    let mut seg = t.pool.alloc().unwrap();
    assert!(seg.extend_from_slice(&bytes));
    let mut asked = false;
    let back = t.s.input_steered(
        t.now,
        PEER,
        US,
        seg,
        &mut t.wire,
        &mut t.ev,
        |_: &FourTuple| {
            asked = true;
            false
        },
    );
    assert!(
        back.is_none() && !asked,
        "the lookup hit: mine is not asked"
    );
    assert_eq!(recv_bytes(&t.events()), b"hi");
    assert_eq!(t.s.stats().steered_away, 0);
}

#[test]
fn failed_imports_give_the_connection_back_and_it_returns_home() {
    let mut t = T::listening();
    let (_, our) = t.knocked(Some(1460), Some(7), 512);
    t.inject(PISS + 1, Some(our), ACK, 512, b"queued before accept");
    t.flush();
    t.out();
    let (_, m) = t.export_only();
    // Target table full.
    let mut full = TcpStack::new(
        TcpConfig {
            max_conns: 1,
            ..test_config()
        },
        t.now,
        [16; 16],
    );
    full.listen(PORT).unwrap();
    let other = FourTuple {
        local: SocketAddrV4::new(US, 9),
        remote: SocketAddrV4::new(PEER, 9),
    };
    full.connect(t.now, other, 0).unwrap();
    let (e, m) = full.import(t.now, m, &t.pool).unwrap_err();
    assert_eq!(e, TcpError::TableFull { max: 1 });
    // Tuple already present.
    let mut dup = t.fresh_stack(17, true);
    dup.connect(t.now, tuple(), 0).unwrap();
    let (e, m) = dup.import(t.now, m, &t.pool).unwrap_err();
    assert_eq!(e, TcpError::TupleInUse);
    // Pool empty.
    let empty = Pool::new(2, 1, false).unwrap();
    let hog = empty.alloc().unwrap();
    let mut starved = t.fresh_stack(18, true);
    let (e, m) = starved.import(t.now, m, &empty).unwrap_err();
    assert_eq!(e, TcpError::PoolEmpty { need: 1 });
    assert_eq!(
        (starved.conn_count(), starved.stats().rx_queue_used),
        (0, 0)
    );
    drop(hog);
    // Receive-queue slab full.
    let mut no_nodes = TcpStack::new(
        TcpConfig {
            rx_queue_entries: 0,
            ..test_config()
        },
        t.now,
        [19; 16],
    );
    no_nodes.listen(PORT).unwrap();
    let (e, m) = no_nodes.import(t.now, m, &t.pool).unwrap_err();
    assert!(
        matches!(e, TcpError::QueueFull { queue: "rx", .. }),
        "{e:?}"
    );
    assert_eq!(
        empty.available(),
        1,
        "buffers of a failed import are returned"
    );
    assert_eq!(m.rx_pending_bytes(), 20);
    // Back into the source: accept works there.
    let conn = t.s.import(t.now, m, &t.pool).unwrap();
    t.s.accept(conn, 1, &mut t.ev).unwrap();
    assert_eq!(recv_bytes(&t.events()), b"queued before accept");
}

#[test]
fn moved_conn_crosses_threads() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<MovedConn>();
    let mut t = T::listening();
    let (_, our) = t.established();
    let (_, m) = t.export_only();
    let m = std::thread::spawn(move || m).join().unwrap();
    let target = t.fresh_stack(20, true);
    t.s = target;
    t.s.import(t.now, m, &t.pool).unwrap();
    t.inject(PISS + 1, Some(our), ACK, 100, b"x");
    assert_eq!(recv_bytes(&t.events()), b"x");
}
