//! The skeleton both binaries run: the listeners, SIGINT and SIGTERM,
//! SIGHUP (reload), the event loop and the shutdown.
//!
//! A [`Service`] (the client's tunnels, the server's handshakes and
//! sessions) owns its [`Reactor`] and says what an accepted connection
//! becomes and what a finished task leaves behind; [`Daemon::serve`] runs
//! the loop around it: accept until the listen queue is empty, run the
//! tasks, hand back the finished ones, give freed memory back. The first
//! signal stops accepting and aborts every task with a Shutdown error
//! ("NAME is shutting down", which a striped pipe passes on to its peer in
//! an RST); the program exits once the tasks are gone, or after
//! [`SHUTDOWN_GRACE`]. A second signal exits at once, with status 130.
//! Without listeners (the client's `--stdio`), the program exits when its
//! last task finishes, and SIGHUP keeps its default meaning (a hangup ends
//! the program).
//!
//! A listening daemon holds a small set of [`Listeners`], each with its own
//! token; [`Service::accepted`] learns which one a connection came from.
//! SIGHUP calls [`Service::reload`], which may bind and close listeners
//! while every task runs on untouched.
//!
//! Under systemd (`Type=notify`, see [`crate::notify`]) the loop reports
//! READY=1 as it starts, the number of open sessions as STATUS (at most
//! once per [`STATUS_EVERY`]), RELOADING=1 then READY=1 around a reload and
//! STOPPING=1 at the first signal.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::config::{bind_first, resolve};
use crate::mem::Trimmer;
use crate::metrics::http::Exporter;
use crate::notify;
use crate::pipe::{ErrorKind, PipeError};
use crate::reactor::{Reactor, SPAN, Task};
use crate::signals::Signals;

/// The signal pipe's token (SIGINT, SIGTERM), in the application's block
/// of the reactor.
pub const SIGNALS: Token = Token(0);
/// SIGHUP's pipe: a reload.
pub const RELOAD: Token = Token(1);
/// The metrics responder's waker: a scrape wants fresh figures.
pub const METRICS: Token = Token(2);
/// Listeners take the rest of the application's block, one token each.
const FIRST_LISTENER: usize = 3;
/// Most listeners one daemon holds at once.
pub const MAX_LISTENERS: usize = SPAN - FIRST_LISTENER;
/// Sessions get this long to send their RSTs after a signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Out of descriptors, accepting pauses this long: a failing accept leaves
/// the connection queued, and retrying at once would spin.
pub const EMFILE_PAUSE: Duration = Duration::from_millis(100);
/// The session count in systemd's STATUS line changes at most this often:
/// a burst of sessions costs one datagram, not one each.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// What a binary puts in the skeleton: its tasks and what to do with them.
pub trait Service {
    type Task: Task;
    /// The program's name, for the reason tasks are aborted with at
    /// shutdown ("stripe-client is shutting down").
    const NAME: &'static str;
    /// Where the skeleton logs: the binary's `module_path!()`, so its lines
    /// read and filter (`RUST_LOG`) as the binary's own.
    const LOG_TARGET: &'static str;

    fn reactor(&mut self) -> &mut Reactor<Self::Task>;

    /// A connection taken off `listener`'s listen queue.
    fn accepted(&mut self, listener: ListenerId, stream: TcpStream, peer: SocketAddr);

    /// SIGHUP: re-read the settings and apply what can change at run time
    /// (`listeners` may be bound and closed here). Tasks are not touched.
    fn reload(&mut self, _listeners: &mut Listeners) {
        info!(target: Self::LOG_TARGET, "SIGHUP received: nothing to reload");
    }

    /// Whether to take another connection now. `false` pauses accepting:
    /// connections wait in the kernel's listen queue, and the loop asks
    /// again after every round of tasks until the queue is empty.
    fn admit(&mut self) -> bool {
        true
    }

    /// Accepting has just paused ([`Service::admit`] said no).
    fn paused(&mut self) {}

    /// A task finished; it is deregistered and `slot` is free again.
    fn finished(&mut self, slot: usize, task: Self::Task);

    /// Aborts a task at shutdown.
    fn abort(task: &mut Self::Task, reason: &PipeError);

    /// Sessions open, for the line a signal is logged with.
    fn sessions(&mut self) -> usize {
        self.reactor().len()
    }

    /// Called after every round of the loop; returns when it next needs to
    /// be called without an event (`None`: only after events).
    fn housekeeping(&mut self, _now: Instant) -> Option<Instant> {
        None
    }

    /// A scrape is waiting: set the metrics from the tasks (`--metrics`).
    fn publish_metrics(&mut self) {}

    /// The exit status when the loop ends.
    fn exit_code(&self) -> ExitCode {
        ExitCode::SUCCESS
    }

    /// Spawns the task made for a connection from `peer`; false (logged)
    /// if it could not be registered.
    fn spawn_accepted(&mut self, task: Self::Task, peer: SocketAddr) -> bool {
        match self.reactor().spawn(task) {
            Ok(_) => true,
            Err(e) => {
                warn!(target: Self::LOG_TARGET, "connection from {peer} dropped: cannot register it: {e}");
                false
            }
        }
    }
}

/// One of a daemon's listeners; stays the same while the listener lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerId(usize);

/// A daemon's listening sockets, each registered under its own token.
#[derive(Default)]
pub struct Listeners {
    slots: Vec<Option<TcpListener>>,
}

impl Listeners {
    /// Listens on `addr` (`HOST:PORT`); returns the listener's id and the
    /// address bound, for the binary's "listening on" line.
    pub fn bind(
        &mut self,
        registry: &Registry,
        addr: &str,
    ) -> Result<(ListenerId, SocketAddr), String> {
        let addrs = resolve("listen address", addr)?;
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.slots.len() < MAX_LISTENERS => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => {
                return Err(format!(
                    "cannot listen on {addr}: at most {MAX_LISTENERS} listeners"
                ));
            }
        };
        let mut listener =
            bind_first(&addrs).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        registry
            .register(
                &mut listener,
                Token(FIRST_LISTENER + slot),
                Interest::READABLE,
            )
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        self.slots[slot] = Some(listener);
        Ok((ListenerId(slot), local))
    }

    /// Stops listening on `id`: connections already accepted go on;
    /// those still in its listen queue are refused by the kernel.
    pub fn close(&mut self, registry: &Registry, id: ListenerId) {
        if let Some(mut l) = self.slots.get_mut(id.0).and_then(Option::take) {
            let _ = registry.deregister(&mut l);
        }
    }

    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The addresses listened on, for systemd's STATUS line.
    fn addrs(&self) -> Vec<String> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect()
    }

    fn ids(&self) -> Vec<ListenerId> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].is_some())
            .map(ListenerId)
            .collect()
    }

    fn id_of(token: Token) -> Option<ListenerId> {
        token.0.checked_sub(FIRST_LISTENER).map(ListenerId)
    }
}

/// The listeners and the signal pipes, registered with a service's reactor.
pub struct Daemon {
    listeners: Listeners,
    /// Whether the program serves listeners (rather than one task).
    listening: bool,
    signals: Signals,
    /// SIGHUP, when listening.
    hangup: Option<Signals>,
    /// Accepting stopped at [`Service::admit`]; connections wait in the
    /// kernel's listen queue.
    paused: bool,
    /// Out of descriptors: no accepting until then.
    starved_until: Option<Instant>,
    /// Times accepting paused for want of descriptors, since the last
    /// warning about it.
    starved: u64,
    /// The `--metrics` responder, when there is one.
    metrics: Option<Exporter>,
}

impl Daemon {
    /// Signal handling only: for a program without a listener.
    pub fn new(registry: &Registry) -> Result<Daemon, String> {
        let signals = Signals::register(registry, SIGNALS)
            .map_err(|e| format!("cannot set up signal handling: {e}"))?;
        Ok(Daemon {
            listeners: Listeners::default(),
            listening: false,
            signals,
            hangup: None,
            paused: false,
            starved_until: None,
            starved: 0,
            metrics: None,
        })
    }

    /// Serves `metrics` on `listen` (`HOST:PORT`) from a thread of its own;
    /// a scrape wakes the loop to [`Service::publish_metrics`]. Returns the
    /// address bound.
    pub fn export_metrics(
        &mut self,
        registry: &Registry,
        listen: &str,
        metrics: Arc<prometheus_client::registry::Registry>,
    ) -> Result<SocketAddr, String> {
        let waker = mio::Waker::new(registry, METRICS)
            .map_err(|e| format!("cannot set up the metrics responder: {e}"))?;
        let (exporter, local) = Exporter::start(listen, metrics, waker)?;
        self.metrics = Some(exporter);
        Ok(local)
    }

    /// Handles signals, SIGHUP included, and serves the listeners bound
    /// with [`Daemon::listeners`]; runs until a signal even with none.
    pub fn listening(registry: &Registry) -> Result<Daemon, String> {
        let mut daemon = Daemon::new(registry)?;
        daemon.hangup = Some(
            Signals::register_hangup(registry, RELOAD)
                .map_err(|e| format!("cannot set up signal handling: {e}"))?,
        );
        daemon.listening = true;
        Ok(daemon)
    }

    /// Listens on `listen` (`HOST:PORT`) and handles signals; returns the
    /// address bound, for the binary's "listening on" line.
    pub fn listen(registry: &Registry, listen: &str) -> Result<(Daemon, SocketAddr), String> {
        let mut daemon = Daemon::listening(registry)?;
        let (_, local) = daemon.listeners.bind(registry, listen)?;
        Ok((daemon, local))
    }

    /// The listeners, to bind more before [`Daemon::serve`].
    pub fn listeners(&mut self) -> &mut Listeners {
        &mut self.listeners
    }

    /// Runs the loop until the program is to exit.
    pub fn serve<S: Service>(mut self, mut service: S) -> Result<ExitCode, String> {
        let target = S::LOG_TARGET;
        let mut own = Vec::new();
        let mut done = Vec::new();
        let mut shutdown: Option<Instant> = None;
        let mut trimmer = Trimmer::new();
        let mut next_chore: Option<Instant> = None;
        let doing = match self.listeners.addrs() {
            a if a.is_empty() => "running".to_string(),
            a => format!("listening on {}", a.join(", ")),
        };
        let mut status = Status::new(doing, service.sessions());
        notify::ready_with_status(&status.line(status.shown));
        let mut next_status: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut wait = trimmer.poll(now);
            for at in [next_chore, self.starved_until, next_status]
                .into_iter()
                .flatten()
            {
                let d = at.saturating_duration_since(now);
                wait = Some(wait.map_or(d, |w| w.min(d)));
            }
            service
                .reactor()
                .poll(&mut own, wait)
                .map_err(|e| format!("event loop failed: {e}"))?;
            for (token, _) in own.drain(..) {
                match token {
                    // (A reload's byte is read even during shutdown.)
                    RELOAD
                        if self.hangup.as_mut().is_some_and(Signals::take)
                            && shutdown.is_none() =>
                    {
                        self.reload(&mut service)
                    }
                    SIGNALS if self.signals.take() => {
                        if shutdown.is_some() {
                            info!(target: target, "second signal: exiting now");
                            return Ok(ExitCode::from(130));
                        }
                        let open = service.sessions();
                        info!(
                            target: target,
                            "signal received: no new connections; closing {open} session(s)"
                        );
                        notify::stopping();
                        notify::status(&format!("shutting down: closing {open} session(s)"));
                        shutdown = Some(Instant::now());
                        self.shut_down(&mut service);
                    }
                    METRICS => {
                        if let Some(m) = &self.metrics {
                            m.publish(|| service.publish_metrics());
                        }
                    }
                    SIGNALS => {}
                    _ if shutdown.is_none() => {
                        if let Some(id) = Listeners::id_of(token) {
                            self.accept_from(&mut service, id);
                        }
                    }
                    _ => {}
                }
            }
            service.reactor().run(&mut done);
            for (slot, task) in done.drain(..) {
                service.finished(slot, task);
                // What a finished task held (a session's state, a
                // handshake's keys) is free now; trim it in due course.
                crate::mem::note_released();
            }
            // The listener is edge-triggered: connections left queued while
            // paused raise no new event, so look again once slots are free
            // (or descriptors, after a pause).
            let now = Instant::now();
            if self.starved_until.is_some_and(|t| now >= t) {
                self.starved_until = None;
                self.paused = true;
            }
            if self.paused && shutdown.is_none() {
                self.accept_all(&mut service);
            }
            next_chore = service.housekeeping(now);
            if shutdown.is_none() {
                next_status = status.poll(now, service.sessions());
            }
            let left = service.reactor().len();
            if !self.listening && left == 0 {
                return Ok(service.exit_code());
            }
            if let Some(since) = shutdown {
                if left == 0 {
                    info!(target: target, "all sessions closed; exiting");
                    return Ok(service.exit_code());
                }
                if since.elapsed() > SHUTDOWN_GRACE {
                    warn!(target: target, "{left} session(s) did not close in time; exiting");
                    return Ok(service.exit_code());
                }
            }
        }
    }

    /// SIGHUP. The two hooks around [`Service::reload`] are where a
    /// service manager is told (sd-notify `RELOADING=1`, then `READY=1`).
    fn reload<S: Service>(&mut self, service: &mut S) {
        self.reload_started();
        service.reload(&mut self.listeners);
        self.reload_finished();
    }

    /// A reload begins: systemd waits for its end (`systemctl reload`).
    fn reload_started(&mut self) {
        notify::reloading();
    }

    /// A reload is over, applied or refused: ready again.
    fn reload_finished(&mut self) {
        notify::ready();
    }

    /// Stops listening and aborts every task; they run at once to send
    /// their goodbyes.
    fn shut_down<S: Service>(&mut self, service: &mut S) {
        for id in self.listeners.ids() {
            self.listeners.close(service.reactor().registry(), id);
        }
        let reason = PipeError::new(ErrorKind::Shutdown, format!("{} is shutting down", S::NAME));
        let reactor = service.reactor();
        for (_, task) in reactor.iter_mut() {
            S::abort(task, &reason);
        }
        reactor.wake_all();
    }

    /// Accepts on every listener (after a pause).
    fn accept_all<S: Service>(&mut self, service: &mut S) {
        for id in self.listeners.ids() {
            self.accept_from(service, id);
        }
    }

    /// Accepts until `id`'s listen queue is empty or the service pauses.
    fn accept_from<S: Service>(&mut self, service: &mut S, id: ListenerId) {
        let Some(Some(listener)) = self.listeners.slots.get_mut(id.0) else {
            return;
        };
        if self.starved_until.is_some() {
            return;
        }
        loop {
            if !service.admit() {
                if !self.paused {
                    service.paused();
                    self.paused = true;
                }
                return;
            }
            match listener.accept() {
                Ok((stream, peer)) => {
                    if self.starved > 0 {
                        info!(
                            target: S::LOG_TARGET,
                            "accepting again: descriptors were short {} time(s)",
                            self.starved
                        );
                        self.starved = 0;
                    }
                    service.accepted(id, stream, peer)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.paused {
                        info!(target: S::LOG_TARGET, "listen queue drained; accepting normally again");
                        self.paused = false;
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // The connection stays queued; try again in a moment
                    // rather than on every new connection's event.
                    self.starved_until = Some(Instant::now() + EMFILE_PAUSE);
                    if self.starved == 0 {
                        warn!(
                            target: S::LOG_TARGET,
                            "accept failed: {e}; pausing new connections for {} ms at a time \
                             until descriptors are free (raise the open-file limit, or \
                             lower --max-sessions)",
                            EMFILE_PAUSE.as_millis()
                        );
                    }
                    self.starved += 1;
                    return;
                }
                Err(e) => {
                    // Out of descriptors and the like: say so, keep serving.
                    warn!(target: S::LOG_TARGET, "accept failed: {e}");
                    return;
                }
            }
        }
    }
}

/// systemd's STATUS line: what the program does and how many sessions are
/// open, sent when the count changes, at most once per [`STATUS_EVERY`].
struct Status {
    doing: String,
    /// Off outside systemd: nothing to tell, no timer to set.
    enabled: bool,
    shown: usize,
    sent: Instant,
}

impl Status {
    fn new(doing: String, sessions: usize) -> Status {
        Status {
            doing,
            enabled: notify::enabled(),
            shown: sessions,
            sent: Instant::now(),
        }
    }

    fn line(&self, sessions: usize) -> String {
        format!("{}; {sessions} session(s) open", self.doing)
    }

    /// Sends the count if it changed and the last line is old enough;
    /// otherwise says when to look again (`None`: nothing pending).
    fn poll(&mut self, now: Instant, sessions: usize) -> Option<Instant> {
        if !self.enabled || sessions == self.shown {
            return None;
        }
        let due = self.sent + STATUS_EVERY;
        if now < due {
            return Some(due);
        }
        notify::status(&self.line(sessions));
        self.shown = sessions;
        self.sent = now;
        None
    }
}
