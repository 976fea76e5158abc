//! [`Chore`]: background work that runs on the one housekeeping
//! connection (the session `last_used` writes, the idempotency sweep, the
//! session cache's listener); the housekeeper in `cluster` runs every chore
//! it is given, LISTENs on the channels they name and hands each its
//! notifications.

use std::time::Duration;

use postgres::Client;

/// Background work that runs on the housekeeping connection.
pub trait Chore: Send {
    /// What it is, for log lines.
    fn name(&self) -> &'static str;
    /// How often it runs.
    fn every(&self) -> Duration;
    /// One run.
    fn run(&mut self, client: &mut Client) -> Result<(), postgres::Error>;
    /// The last run before the instance stops.
    fn finish(&mut self, client: &mut Client) -> Result<(), postgres::Error> {
        self.run(client)
    }
    /// The notification channels it hears (LISTENed on the housekeeping
    /// connection).
    fn channels(&self) -> &'static [&'static str] {
        &[]
    }
    /// A notification on one of its channels.
    fn notified(&mut self, _channel: &str, _payload: &str) {}
    /// A new housekeeping connection now LISTENs on its channels: what was
    /// sent before never reached it.
    fn listening(&mut self) {}
    /// The housekeeping connection was lost: nothing is heard until the
    /// next [`Chore::listening`].
    fn deaf(&mut self) {}
    /// Every notification the connection had received, up to the end of
    /// the last round trip on it, was handed to [`Chore::notified`].
    fn delivered(&mut self) {}
}
