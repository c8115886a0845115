//! Packet views and representations, smoltcp style: a `Packet<T>` view over
//! bytes with `new_checked` (after which no accessor panics), field
//! accessors and setters, and a validated `Repr` that parses from and emits
//! into a view.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
