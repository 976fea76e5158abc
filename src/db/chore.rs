//! [`Chore`]: background work that runs on the one housekeeping
//! connection (the session `last_used` writes, the idempotency sweep);
//! the housekeeper in `cluster` runs every chore it is given.

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
}
