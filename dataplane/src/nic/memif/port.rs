//! A memif port: its control thread (listen or connect, handshake, watch
//! the connection, reconnect) and the link state the queues follow.
//!
//! The control thread is the only one that touches the socket. It
//! publishes each established connection as an `Arc<Connection>` and
//! bumps a generation counter on every link change; a queue compares the
//! counter (one acquire load per burst) and only on a change takes the
//! lock to pick up the new connection. The mapped regions live as long as
//! any queue still holds the old connection, so a disconnect never unmaps
//! memory under a running burst.
//!
//! The master keeps listening after a disconnect and serves the next
//! slave; a second slave connecting while one is served gets DISCONNECT
//! "Already connected". The slave retries connecting (backing off up to
//! half a second) until the port is dropped.

#![deny(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::control::{self, ControlError, Listener, SeqPacket};
use super::handshake::{self, Connection, Params};
use super::proto::Message;
use super::queue::MemifQueue;
use super::{MemifConfig, MemifError, MemifRole, Steering};
use crate::buf::Pool;
use crate::rss::RssConfig;

/// How long a peer may take for the whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest pause between a slave's connection attempts.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(500);

#[derive(Default)]
struct State {
    conn: Option<Arc<Connection>>,
    last: Option<String>,
    connects: u64,
    /// A queue found the peer misbehaving on the connection of this
    /// generation: the control thread disconnects with this reason.
    fault: Option<(u64, &'static str)>,
    /// This end's receive table (RSS steering; empty otherwise): published
    /// on every connection, changed by [`MemifPort::set_rx_table`].
    rx_table: Vec<u16>,
}

/// State shared by the port, its control thread and its queues.
pub(crate) struct Shared {
    /// The configuration (validated).
    pub cfg: MemifConfig,
    /// Link generation: changes whenever the link goes up or down.
    pub generation: AtomicU64,
    state: Mutex<State>,
    changed: Condvar,
    shutdown: AtomicBool,
    /// Wakes the control thread (shutdown, faults).
    wake: OwnedFd,
    claimed: Vec<AtomicBool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data that
        // is still consistent (each update is a single assignment).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current generation and connection.
    pub fn snapshot(&self) -> (u64, Option<Arc<Connection>>) {
        let st = self.lock();
        (self.generation.load(Ordering::Acquire), st.conn.clone())
    }

    /// Asks the control thread to drop the connection of generation
    /// `generation` because the peer broke the ring protocol.
    pub fn report_fault(&self, generation: u64, what: &'static str) {
        log::warn!("memif {:?}: {what}; disconnecting", self.cfg.socket_path);
        let mut st = self.lock();
        if self.generation.load(Ordering::Acquire) == generation && st.conn.is_some() {
            st.fault = Some((generation, what));
            control::eventfd_signal(self.wake.as_fd());
        }
    }

    /// Gives queue `q` back.
    pub fn release_queue(&self, q: u16) {
        self.claimed[usize::from(q)].store(false, Ordering::Release);
    }

    fn link_up(&self, conn: Connection) {
        let mut st = self.lock();
        log::info!(
            "memif {:?}: connected to {:?} ({})",
            self.cfg.socket_path,
            conn.peer_if_name,
            conn.peer_name
        );
        // The handshake published the table it was given; a change made
        // since then is published here, under the lock `set_rx_table`
        // takes, so the last table set is the one in the shared memory.
        if let Some((area, spec)) = conn.steer_area().zip(conn.steer) {
            area.publish(spec.own, &st.rx_table);
        }
        st.conn = Some(Arc::new(conn));
        st.connects += 1;
        st.fault = None;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_all();
    }

    fn link_down(&self, reason: String) {
        let mut st = self.lock();
        log::info!("memif {:?}: link down: {reason}", self.cfg.socket_path);
        st.conn = None;
        st.fault = None;
        st.last = Some(reason);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_all();
    }

    fn note(&self, what: String) {
        log::debug!("memif {:?}: {what}", self.cfg.socket_path);
        self.lock().last = Some(what);
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// The fault to act on, if it concerns the current connection.
    fn take_fault(&self) -> Option<&'static str> {
        let mut st = self.lock();
        let g = self.generation.load(Ordering::Acquire);
        st.fault.take().filter(|(fg, _)| *fg == g).map(|(_, w)| w)
    }
}

/// A memif port: owns the control channel (a small control thread) and,
/// through it, the mapped regions. `Send + Sync`; queues are taken with
/// [`MemifPort::queue`] on the threads that poll them.
///
/// Dropping the port tells a connected peer (DISCONNECT "interface
/// closed"), stops the control thread and, for a master, removes the
/// socket file. Queues still alive see the link down.
pub struct MemifPort {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

// The port is shared between the threads that poll its queues.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<MemifPort>();
};

impl std::fmt::Debug for MemifPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemifPort")
            .field("socket", &self.shared.cfg.socket_path)
            .field("role", &self.shared.cfg.role)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl MemifPort {
    /// Validates `cfg` and starts the port: a master binds and listens
    /// (failing here if it cannot), a slave starts connecting in the
    /// background (retrying until a master answers).
    pub fn open(cfg: MemifConfig) -> Result<MemifPort, MemifError> {
        cfg.validate()?;
        let listener = match cfg.role {
            MemifRole::Master => {
                Some(
                    Listener::bind(&cfg.socket_path).map_err(|source| MemifError::Listen {
                        path: cfg.socket_path.clone(),
                        source,
                    })?,
                )
            }
            MemifRole::Slave => None,
        };
        let wake = control::eventfd().map_err(|e| match e {
            ControlError::Io { source, .. } => MemifError::Thread(source),
            other => MemifError::Thread(std::io::Error::other(other.to_string())),
        })?;
        let state = State {
            rx_table: match &cfg.steering {
                Steering::Rss(r) => r.reta.clone(),
                Steering::None => Vec::new(),
            },
            ..State::default()
        };
        let shared = Arc::new(Shared {
            claimed: (0..cfg.queues).map(|_| AtomicBool::new(false)).collect(),
            cfg,
            generation: AtomicU64::new(0),
            state: Mutex::new(state),
            changed: Condvar::new(),
            shutdown: AtomicBool::new(false),
            wake,
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("memif-ctl".into())
            .spawn(move || match listener {
                Some(l) => run_master(&sh, l),
                None => run_slave(&sh),
            })
            .map_err(MemifError::Thread)?;
        Ok(MemifPort {
            shared,
            thread: Some(thread),
        })
    }

    /// Waits until the link is up, at most `timeout`.
    pub fn wait_connected(&self, timeout: Duration) -> Result<(), MemifError> {
        let st = self.shared.lock();
        let (st, _) = self
            .shared
            .changed
            .wait_timeout_while(st, timeout, |s| s.conn.is_none())
            .unwrap_or_else(|e| e.into_inner());
        if st.conn.is_some() {
            Ok(())
        } else {
            Err(MemifError::Timeout {
                path: self.shared.cfg.socket_path.clone(),
                waited: timeout,
                last: st.last.clone(),
            })
        }
    }

    /// Waits until the link is down, at most `timeout`; true if it is.
    pub fn wait_disconnected(&self, timeout: Duration) -> bool {
        let st = self.shared.lock();
        let (st, _) = self
            .shared
            .changed
            .wait_timeout_while(st, timeout, |s| s.conn.is_some())
            .unwrap_or_else(|e| e.into_inner());
        st.conn.is_none()
    }

    /// Whether the link is up.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().conn.is_some()
    }

    /// How many times the link has come up.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connects
    }

    /// The last handshake failure or disconnect reason.
    pub fn last_event(&self) -> Option<String> {
        self.shared.lock().last.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &MemifConfig {
        &self.shared.cfg
    }

    /// Publishes `reta` as this end's receive table (flow group → queue):
    /// the peer steers its next frames by it. Kept, and published again
    /// on every reconnect. The table must have the configured number of
    /// flow groups and name only queues the port has; nothing changes
    /// otherwise.
    ///
    /// Entries are stored one by one (see the module docs for what a
    /// sender sees mid-update). Frames already in a ring stay there: the
    /// old queue receives them, so a flow moved between queues may be
    /// seen out of order across the move unless the old queue is drained
    /// first.
    pub fn set_rx_table(&self, reta: &[u16]) -> Result<(), MemifError> {
        let cfg = &self.shared.cfg;
        let Steering::Rss(rss) = &cfg.steering else {
            return Err(MemifError::NotSteering);
        };
        if reta.len() != rss.reta.len() {
            return Err(MemifError::RetaLength {
                len: reta.len(),
                groups: rss.reta.len(),
            });
        }
        if let Some((group, &queue)) = reta.iter().enumerate().find(|(_, &q)| q >= cfg.queues) {
            return Err(MemifError::Reta {
                group,
                queue,
                queues: cfg.queues,
            });
        }
        let mut st = self.shared.lock();
        st.rx_table.clear();
        st.rx_table.extend_from_slice(reta);
        if let Some(conn) = &st.conn {
            if let Some((area, spec)) = conn.steer_area().zip(conn.steer) {
                area.publish(spec.own, reta);
            }
        }
        Ok(())
    }

    /// This end's receive table (empty without RSS steering).
    pub fn rx_table(&self) -> Vec<u16> {
        self.shared.lock().rx_table.clone()
    }

    /// The peer's receive table as it is in the shared memory now (what
    /// this end steers by), or `None` when the link is down or frames are
    /// not steered. Untrusted: entries may name queues the port lacks.
    pub fn peer_rx_table(&self) -> Option<Vec<u16>> {
        let conn = self.shared.lock().conn.clone()?;
        let (area, spec) = conn.steer_area().zip(conn.steer)?;
        Some(area.read_table(spec.own.peer()))
    }

    /// The state shared with the control thread (tests reach the rings
    /// through it to play a misbehaving peer).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Takes queue pair `q`, receiving into `pool`. Call it on the thread
    /// that will poll the queue (the pool is that thread's). A queue can be
    /// taken again once its [`MemifQueue`] is dropped.
    pub fn queue(&self, q: u16, pool: Pool) -> Result<MemifQueue, MemifError> {
        let queues = self.shared.cfg.queues;
        let Some(flag) = self.shared.claimed.get(usize::from(q)) else {
            return Err(MemifError::NoSuchQueue { queue: q, queues });
        };
        if flag
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(MemifError::QueueInUse { queue: q });
        }
        Ok(MemifQueue::new(self.shared.clone(), q, pool))
    }
}

impl Drop for MemifPort {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        control::eventfd_signal(self.shared.wake.as_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Handshake parameters, with the current receive table.
fn params(sh: &Shared) -> Params {
    let cfg = &sh.cfg;
    Params {
        rss: cfg.rss_steering().map(|r| RssConfig {
            key: r.key,
            reta: sh.lock().rx_table.clone(),
        }),
        id: cfg.id,
        secret: cfg.secret.clone(),
        name: cfg.name.clone(),
        rings: cfg.rings_per_direction() as u16,
        log2_ring_size: cfg.log2_ring_size,
        buffer_size: cfg.buffer_size,
    }
}

fn run_master(sh: &Shared, listener: Listener) {
    while !sh.stopping() {
        let ready = match control::poll_readable(&[listener.as_fd(), sh.wake.as_fd()], None) {
            Ok(r) => r,
            Err(e) => {
                sh.note(format!("poll: {e}"));
                std::thread::sleep(RETRY_MAX);
                continue;
            }
        };
        if ready & 2 != 0 {
            control::eventfd_drain(sh.wake.as_fd());
            continue;
        }
        if ready & 1 == 0 {
            continue;
        }
        let ch = match listener.accept() {
            Ok(ch) => ch,
            Err(e) => {
                sh.note(format!("accept: {e}"));
                continue;
            }
        };
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        match handshake::master(&ch, &params(sh), deadline, Some(sh.wake.as_fd())) {
            Ok(conn) => {
                sh.link_up(conn);
                let reason = serve(sh, &ch, Some(&listener));
                sh.link_down(reason);
            }
            Err(e) => sh.note(format!("handshake failed: {e}")),
        }
    }
}

fn run_slave(sh: &Shared) {
    let mut pause = RETRY_MIN;
    while !sh.stopping() {
        match SeqPacket::connect(&sh.cfg.socket_path) {
            Err(e) => sh.note(format!("connect: {e}")),
            Ok(ch) => {
                let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
                match handshake::slave(&ch, &params(sh), deadline, Some(sh.wake.as_fd())) {
                    Ok(conn) => {
                        sh.link_up(conn);
                        let reason = serve(sh, &ch, None);
                        sh.link_down(reason);
                        pause = RETRY_MIN;
                    }
                    Err(e) => sh.note(format!("handshake failed: {e}")),
                }
            }
        }
        if sh.stopping() {
            break;
        }
        if let Ok(r) = control::poll_readable(&[sh.wake.as_fd()], Some(pause)) {
            if r != 0 {
                control::eventfd_drain(sh.wake.as_fd());
            }
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// Watches an established connection until it ends; returns why.
fn serve(sh: &Shared, ch: &SeqPacket, listener: Option<&Listener>) -> String {
    loop {
        let mut fds = vec![ch.as_fd(), sh.wake.as_fd()];
        fds.extend(listener.map(Listener::as_fd));
        let ready = match control::poll_readable(&fds, None) {
            Ok(r) => r,
            Err(e) => return format!("poll: {e}"),
        };
        if ready & 1 != 0 {
            match ch.recv(Some(Instant::now()), None) {
                Ok(r) => match Message::decode(r.bytes()) {
                    Ok(Message::Disconnect { reason, .. }) => {
                        return format!("peer disconnected: {reason}")
                    }
                    Ok(Message::Ack) => {}
                    Ok(m) => {
                        let why = format!("unexpected {} while connected", m.kind());
                        handshake::send_disconnect(ch, &why);
                        return why;
                    }
                    Err(e) => {
                        let why = e.to_string();
                        handshake::send_disconnect(ch, &why);
                        return why;
                    }
                },
                Err(ControlError::Timeout) => {}
                Err(ControlError::Closed) => return "peer closed the connection".into(),
                Err(e) => return e.to_string(),
            }
        }
        if ready & 2 != 0 {
            control::eventfd_drain(sh.wake.as_fd());
            if sh.stopping() {
                handshake::send_disconnect(ch, "interface closed");
                return "interface closed".into();
            }
            if let Some(why) = sh.take_fault() {
                handshake::send_disconnect(ch, why);
                return why.into();
            }
        }
        if ready & 4 != 0 {
            if let Some(l) = listener {
                if let Ok(extra) = l.accept() {
                    handshake::send_disconnect(&extra, "Already connected");
                }
            }
        }
    }
}
