//! Keeping certificates current: when to renew ([`schedule`]) and the one loop that does it
//! ([`Keeper`]), shared by instance identities, cell credentials and the server's own
//! certificate.

mod keeper;
pub mod schedule;

pub use keeper::{Attempts, Keeper, Kept, Renewer, RevokedSerials};
pub use schedule::Schedule;
