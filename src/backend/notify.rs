//! LISTEN/NOTIFY for transaction-mode clients without pinning them: one listening server
//! connection per (database, user) on the primary issues LISTEN and UNLISTEN as clients
//! subscribe and leave, and hands every notification to each client listening on its channel,
//! through a bounded mailbox per client. A client whose mailbox overflows is told and closed
//! rather than silently losing notifications.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::{BackendError, LoginTarget, PoolKey, ServerConn};
use crate::telemetry::Metrics;
use crate::wire::messages::{ErrorFields, take_cstr};
use crate::wire::tag::server;

/// Notifications a client may have waiting before it is closed for not reading them.
pub const MAILBOX_SIZE: usize = 1024;

/// Where the hub's listening connection logs in: the primary's pool for its (database, user),
/// as it is now.
pub trait ListenerTarget: Send + Sync {
    /// The login of the primary for `key`, if there is one now.
    fn primary_target(&self, key: &PoolKey) -> Option<LoginTarget>;
    /// Limit on opening the listening connection.
    fn connect_timeout(&self) -> Duration;
}

/// Why a subscription could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The listening connection could not be opened or lost its server.
    #[error("the notification listener cannot reach the primary: {0}")]
    Unavailable(String),
    /// The server refused the LISTEN (a channel name it does not accept).
    #[error("{}", .0.message)]
    Refused(ErrorFields),
}

/// What a client keeps to receive its notifications.
#[derive(Debug)]
pub struct Mailbox {
    /// NotificationResponse messages, ready to forward.
    pub incoming: mpsc::Receiver<Bytes>,
    sender: mpsc::Sender<Bytes>,
    overflowed: Arc<AtomicBool>,
}

impl Mailbox {
    /// An empty mailbox.
    #[must_use]
    pub fn new() -> Self {
        let (sender, incoming) = mpsc::channel(MAILBOX_SIZE);
        Self {
            incoming,
            sender,
            overflowed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether notifications were refused because the client did not read them in time.
    #[must_use]
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

impl Default for Mailbox {
    fn default() -> Self {
        Self::new()
    }
}

/// One subscribed client.
#[derive(Debug, Clone)]
struct Subscriber {
    sender: mpsc::Sender<Bytes>,
    overflowed: Arc<AtomicBool>,
}

enum Command {
    Listen(String, oneshot::Sender<Result<(), NotifyError>>),
    Unlisten(String),
}

/// The subscriptions of one (database, user) and its listening connection's task.
#[derive(Debug)]
pub struct ChannelHub {
    key: PoolKey,
    /// Channel → client (by its pid) → mailbox.
    channels: Mutex<HashMap<String, HashMap<i32, Subscriber>>>,
    commands: mpsc::UnboundedSender<Command>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Listen(channel, _) => write!(f, "LISTEN {channel}"),
            Self::Unlisten(channel) => write!(f, "UNLISTEN {channel}"),
        }
    }
}

impl ChannelHub {
    /// Subscribes `client` to `channel`; returns once the listening connection listens on it,
    /// so that every notification committed after this returns reaches the client.
    ///
    /// # Errors
    /// [`NotifyError`] when the listener cannot listen; the client is not subscribed then.
    ///
    /// # Panics
    /// If the hub's lock was poisoned.
    pub async fn listen(
        &self,
        client: i32,
        channel: &str,
        mailbox: &Mailbox,
    ) -> Result<(), NotifyError> {
        self.channels
            .lock()
            .expect("notify hub lock")
            .entry(channel.to_owned())
            .or_default()
            .insert(
                client,
                Subscriber {
                    sender: mailbox.sender.clone(),
                    overflowed: Arc::clone(&mailbox.overflowed),
                },
            );
        let (done, confirmed) = oneshot::channel();
        let sent = self
            .commands
            .send(Command::Listen(channel.to_owned(), done));
        let result = match sent {
            Ok(()) => confirmed
                .await
                .unwrap_or_else(|_| Err(NotifyError::Unavailable("the listener stopped".into()))),
            Err(_) => Err(NotifyError::Unavailable("the listener stopped".into())),
        };
        if result.is_err() {
            self.unlisten(client, Some(channel));
        }
        result
    }

    /// Ends `client`'s subscription to `channel`, or to every channel.
    ///
    /// # Panics
    /// If the hub's lock was poisoned.
    pub fn unlisten(&self, client: i32, channel: Option<&str>) {
        let mut channels = self.channels.lock().expect("notify hub lock");
        let names: Vec<String> = match channel {
            Some(name) => vec![name.to_owned()],
            None => channels.keys().cloned().collect(),
        };
        for name in names {
            let Some(listeners) = channels.get_mut(&name) else {
                continue;
            };
            listeners.remove(&client);
            if listeners.is_empty() {
                channels.remove(&name);
                let _ = self.commands.send(Command::Unlisten(name));
            }
        }
        self.metrics
            .notifications
            .channels(&self.key.database, channels.len());
    }

    /// Hands one NotificationResponse to every client listening on its channel. A client whose
    /// mailbox is full is unsubscribed and marked, so that its session tells it and ends.
    fn deliver(&self, channel: &str, message: &Bytes) {
        let mut channels = self.channels.lock().expect("notify hub lock");
        let Some(listeners) = channels.get_mut(channel) else {
            return;
        };
        listeners.retain(
            |_, subscriber| match subscriber.sender.try_send(message.clone()) {
                Ok(()) => {
                    self.metrics.notifications.delivered();
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    subscriber.overflowed.store(true, Ordering::Relaxed);
                    self.metrics.notifications.dropped("queue_full");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
        );
    }

    /// The channels someone listens on, for a new listening connection to catch up.
    fn channel_names(&self) -> Vec<String> {
        self.channels
            .lock()
            .expect("notify hub lock")
            .keys()
            .cloned()
            .collect()
    }
}

/// Every hub of one proxy, created on first LISTEN of a (database, user).
#[derive(Debug)]
pub struct NotifyHubs {
    hubs: Mutex<HashMap<PoolKey, Arc<ChannelHub>>>,
    metrics: Arc<Metrics>,
}

impl NotifyHubs {
    /// Hubs whose figures go to `metrics`.
    #[must_use]
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            hubs: Mutex::default(),
            metrics,
        }
    }

    /// The hub of `key`, started (its listener task logging in through `target`) if needed.
    ///
    /// # Panics
    /// If the hubs' lock was poisoned.
    pub fn hub(&self, key: &PoolKey, target: Weak<dyn ListenerTarget>) -> Arc<ChannelHub> {
        let mut hubs = self.hubs.lock().expect("notify hubs lock");
        if let Some(hub) = hubs.get(key) {
            return Arc::clone(hub);
        }
        let (commands, received) = mpsc::unbounded_channel();
        let hub = Arc::new(ChannelHub {
            key: key.clone(),
            channels: Mutex::default(),
            commands,
            metrics: Arc::clone(&self.metrics),
        });
        tokio::spawn(listen_for(Arc::downgrade(&hub), target, received));
        hubs.insert(key.clone(), Arc::clone(&hub));
        hub
    }
}

/// `LISTEN "name"` with the name quoted as an identifier.
fn statement(verb: &str, channel: &str) -> String {
    format!("{verb} \"{}\"", channel.replace('"', "\"\""))
}

/// The NotificationResponse as the client receives it, and its channel.
fn notification(body: &Bytes) -> Option<(String, Bytes)> {
    let channel = take_cstr(body.get(4..)?).ok()?.0.to_owned();
    let mut message = BytesMut::with_capacity(body.len() + 5);
    message.put_u8(server::NOTIFICATION_RESPONSE);
    message.put_u32(u32::try_from(body.len() + 4).ok()?);
    message.put_slice(body);
    Some((channel, message.freeze()))
}

/// The listener task: keeps one connection to the current primary listening on every channel
/// someone subscribed to, forwards what arrives, and reconnects (listening again on every
/// channel) when the connection is lost or the primary changes. Notifications sent while it
/// has no connection are not seen, as with any client that reconnects.
async fn listen_for(
    hub: Weak<ChannelHub>,
    target: Weak<dyn ListenerTarget>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> Option<()> {
    // The listening connection and the address of the primary it was opened to.
    let mut conn: Option<(ServerConn, String)> = None;
    // Confirmations owed, in the order the server answers.
    let mut owed: VecDeque<Option<oneshot::Sender<Result<(), NotifyError>>>> = VecDeque::new();
    let mut failure: Option<ErrorFields> = None;
    let mut follow = tokio::time::interval(Duration::from_secs(1));
    loop {
        let Some((open, address)) = conn.as_mut() else {
            conn = reconnect(&hub, &target, &mut commands, &mut owed).await?;
            continue;
        };
        tokio::select! {
            _ = follow.tick() => {
                // Another host became the primary while this one still answers (a fenced or
                // read-only old primary): NOTIFY now runs there, so listen there.
                let key = &hub.upgrade()?.key;
                if let Some(primary) = target.upgrade()?.primary_target(key)
                    && primary.address != *address
                {
                    let moved = format!("the primary is now {}", primary.address);
                    lost(&mut conn, &mut owed, &moved);
                }
            }
            command = commands.recv() => {
                let command = command?;
                let (sql, done) = match command {
                    Command::Listen(channel, done) => (statement("LISTEN", &channel), Some(done)),
                    Command::Unlisten(channel) => (statement("UNLISTEN", &channel), None),
                };
                if let Err(e) = open.send_query(&sql).await {
                    if let Some(done) = done {
                        let _ = done.send(Err(NotifyError::Unavailable(e.to_string())));
                    }
                    lost(&mut conn, &mut owed, &e);
                    continue;
                }
                owed.push_back(done);
            }
            message = open.next_message() => {
                let message = match message {
                    Ok(message) => message,
                    Err(e) => {
                        lost(&mut conn, &mut owed, &e);
                        continue;
                    }
                };
                let hub = hub.upgrade()?;
                match message.tag {
                    server::NOTIFICATION_RESPONSE => {
                        if let Some((channel, forwarded)) = notification(&message.body) {
                            hub.deliver(&channel, &forwarded);
                        }
                    }
                    server::ERROR_RESPONSE => failure = Some(ErrorFields::parse(&message.body)),
                    server::READY_FOR_QUERY => {
                        if let Some(Some(done)) = owed.pop_front() {
                            let _ = done.send(failure.take().map_or(Ok(()), |e| Err(NotifyError::Refused(e))));
                        }
                        failure = None;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// With no listening connection: waits for a LISTEN while nobody listens, else opens one at
/// once (again every second while the primary cannot be reached, failing the LISTENs that
/// arrive meanwhile). `None` when the proxy is gone.
async fn reconnect(
    hub: &Weak<ChannelHub>,
    target: &Weak<dyn ListenerTarget>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    owed: &mut VecDeque<Option<oneshot::Sender<Result<(), NotifyError>>>>,
) -> Option<Option<(ServerConn, String)>> {
    let wanted = !hub.upgrade()?.channel_names().is_empty();
    let command = if wanted {
        None
    } else {
        Some(commands.recv().await?)
    };
    let (strong_hub, strong_target) = (hub.upgrade()?, target.upgrade()?);
    let (mut conn, address) = match connect(&strong_hub, strong_target.as_ref()).await {
        Ok(conn) => conn,
        Err(e) => {
            if let Some(Command::Listen(_, done)) = command {
                let _ = done.send(Err(e));
            } else {
                tracing::warn!(pool = %strong_hub.key, error = %e, "notification listener cannot reconnect; retrying");
                while let Ok(waiting) = commands.try_recv() {
                    if let Command::Listen(_, done) = waiting {
                        let _ = done.send(Err(NotifyError::Unavailable(e.to_string())));
                    }
                }
                drop((strong_hub, strong_target));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            return Some(None);
        }
    };
    // The subscription behind this command is already in the hub, so the new connection
    // listens on it; the confirmation still follows the server's answer.
    if let Some(Command::Listen(channel, done)) = command {
        match conn.send_query(&statement("LISTEN", &channel)).await {
            Ok(()) => owed.push_back(Some(done)),
            Err(e) => {
                let _ = done.send(Err(NotifyError::Unavailable(e.to_string())));
                return Some(None);
            }
        }
    }
    Some(Some((conn, address)))
}

/// Opens the listening connection to the current primary and listens again on every channel
/// subscribed to so far.
async fn connect(
    hub: &ChannelHub,
    target: &dyn ListenerTarget,
) -> Result<(ServerConn, String), NotifyError> {
    let login = target
        .primary_target(&hub.key)
        .ok_or_else(|| NotifyError::Unavailable("no primary is known".into()))?;
    let unavailable = |e: BackendError| NotifyError::Unavailable(e.to_string());
    let mut conn = ServerConn::connect(&login, target.connect_timeout(), 0)
        .await
        .map_err(unavailable)?;
    for channel in hub.channel_names() {
        conn.run_quietly(&statement("LISTEN", &channel))
            .await
            .map_err(unavailable)?;
    }
    tracing::info!(pool = %hub.key, server = %login.address, "notification listener connected");
    Ok((conn, login.address))
}

/// The listening connection failed: whoever waits for a confirmation is told, and the next
/// command opens a new one (listening again on every channel).
fn lost(
    conn: &mut Option<(ServerConn, String)>,
    owed: &mut VecDeque<Option<oneshot::Sender<Result<(), NotifyError>>>>,
    error: &dyn std::fmt::Display,
) {
    tracing::warn!(error = %error, "notification listener lost its server connection");
    *conn = None;
    for done in owed.drain(..).flatten() {
        let _ = done.send(Err(NotifyError::Unavailable(error.to_string())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_name_is_quoted_as_an_identifier() {
        assert_eq!(statement("LISTEN", "orders"), "LISTEN \"orders\"");
        assert_eq!(statement("UNLISTEN", "a\"b"), "UNLISTEN \"a\"\"b\"");
    }

    #[test]
    fn a_notification_is_forwarded_whole_and_read_for_its_channel() {
        let mut body = BytesMut::new();
        body.put_i32(4242);
        body.put_slice(b"orders\0paid\0");
        let (channel, message) = notification(&body.freeze()).unwrap();
        assert_eq!(channel, "orders");
        assert_eq!(&message[..1], b"A");
        assert_eq!(
            u32::from_be_bytes(message[1..5].try_into().unwrap()) as usize,
            message.len() - 1
        );
    }
}
