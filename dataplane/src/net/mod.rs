//! The network layer between the NIC queue and TCP: Ethernet, ARP, IPv4 and
//! ICMP processing for one interface, and the [`IpSender`] seam through
//! which TCP emits segments without knowing about frames.

pub mod arp_cache;
pub mod iface;

use std::net::Ipv4Addr;

/// Implemented by the IP layer: sends one IPv4 packet carrying a TCP
/// segment. TCP calls this for every segment it emits.
pub trait IpSender {
    /// Allocates a frame with room for `l4_len` bytes of TCP segment after
    /// the Ethernet and IPv4 headers, calls `fill` with exactly those bytes
    /// (for the TCP header, options and payload, checksum included), then
    /// completes the IPv4 and Ethernet headers and queues the frame for
    /// transmission (or, while the next hop's MAC is being resolved, in the
    /// ARP pending queue).
    ///
    /// Returns false if the frame could not be built (pool exhausted, ARP
    /// pending queue full, `l4_len` beyond the MTU): TCP treats that as a
    /// segment lost on the wire and recovers by retransmission.
    fn send_tcp(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        l4_len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> bool;
}
