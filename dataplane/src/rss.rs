//! Receive-side scaling: the Toeplitz hash over a flow's addresses and
//! ports, and the redirection table that maps hash values to *flow groups*
//! and flow groups to queues (as NIC hardware does, and as IX migrates).
//!
//! The hash input follows Microsoft's RSS specification ("Verifying the RSS
//! hash calculation"): for TCP/IPv4, source address, destination address,
//! source port, destination port, all in network byte order.

/// Length of a Toeplitz key.
pub const RSS_KEY_LEN: usize = 40;

/// The default key (Microsoft's verification key, also DPDK's default).
pub const DEFAULT_RSS_KEY: [u8; RSS_KEY_LEN] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Number of flow groups in the default redirection table.
pub const DEFAULT_FLOW_GROUPS: usize = 128;

/// Computes the Toeplitz hash of `input` under `key`.
///
/// Panics if the input is longer than the key allows (key bits − 32).
pub fn toeplitz(key: &[u8; RSS_KEY_LEN], input: &[u8]) -> u32 {
    assert!(input.len() + 4 <= RSS_KEY_LEN, "RSS input too long");
    let mut result = 0u32;
    // The 32-bit window of the key starting at the current input bit.
    let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    for (i, &byte) in input.iter().enumerate() {
        let next = key[i + 4];
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                result ^= window;
            }
            window = (window << 1) | u32::from((next >> (7 - bit)) & 1);
        }
    }
    result
}

/// A TCP/UDP over IPv4 flow as seen by the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    /// Source address (the remote peer for a received packet).
    pub src_ip: [u8; 4],
    /// Destination address.
    pub dst_ip: [u8; 4],
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl FlowTuple {
    /// The RSS hash input: src ip, dst ip, src port, dst port.
    pub fn hash_input(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.src_ip);
        b[4..8].copy_from_slice(&self.dst_ip);
        b[8..10].copy_from_slice(&self.src_port.to_be_bytes());
        b[10..12].copy_from_slice(&self.dst_port.to_be_bytes());
        b
    }

    /// The same flow seen from the other end.
    pub fn reversed(&self) -> FlowTuple {
        FlowTuple {
            src_ip: self.dst_ip,
            dst_ip: self.src_ip,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }

    /// Extracts the flow of an Ethernet frame carrying IPv4 TCP or UDP.
    /// `None` for anything else, for fragments, or for a truncated frame.
    pub fn from_frame(frame: &[u8]) -> Option<FlowTuple> {
        const ETH_LEN: usize = 14;
        if frame.len() < ETH_LEN + 20 || frame[12..14] != [0x08, 0x00] {
            return None;
        }
        let ip = &frame[ETH_LEN..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let proto = ip[9];
        let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
        if ip[0] >> 4 != 4 || ihl < 20 || frag != 0 || !(proto == 6 || proto == 17) {
            return None;
        }
        let l4 = ip.get(ihl..ihl + 4)?;
        Some(FlowTuple {
            src_ip: ip[12..16].try_into().ok()?,
            dst_ip: ip[16..20].try_into().ok()?,
            src_port: u16::from_be_bytes([l4[0], l4[1]]),
            dst_port: u16::from_be_bytes([l4[2], l4[3]]),
        })
    }
}

/// A port's RSS configuration: the key and the redirection table mapping
/// flow groups (hash modulo table length) to queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RssConfig {
    /// Toeplitz key.
    pub key: [u8; RSS_KEY_LEN],
    /// Queue of each flow group.
    pub reta: Vec<u16>,
}

impl RssConfig {
    /// `groups` flow groups spread round-robin over `queues` queues
    /// (group i → queue i mod queues), with the default key.
    pub fn round_robin(queues: u16, groups: usize) -> RssConfig {
        assert!(queues > 0 && groups > 0);
        RssConfig {
            key: DEFAULT_RSS_KEY,
            reta: (0..groups)
                .map(|g| (g % usize::from(queues)) as u16)
                .collect(),
        }
    }

    /// The flow group of a flow.
    pub fn flow_group(&self, flow: &FlowTuple) -> usize {
        toeplitz(&self.key, &flow.hash_input()) as usize % self.reta.len()
    }

    /// The queue a flow is steered to.
    pub fn queue_for(&self, flow: &FlowTuple) -> u16 {
        self.reta[self.flow_group(flow)]
    }

    /// The queue an Ethernet frame is steered to (queue 0 for frames that
    /// are not TCP/UDP over IPv4, as NICs do for non-hashable traffic).
    pub fn queue_for_frame(&self, frame: &[u8]) -> u16 {
        FlowTuple::from_frame(frame).map_or(0, |f| self.queue_for(&f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vectors from Microsoft's "Verifying the RSS Hash Calculation"
    /// (IPv4 with TCP ports), destination first in the table, source first
    /// in the hash input.
    #[test]
    fn toeplitz_matches_microsoft_vectors() {
        type Case = ([u8; 4], u16, [u8; 4], u16, u32);
        let cases: [Case; 5] = [
            (
                [161, 142, 100, 80],
                1766,
                [66, 9, 149, 187],
                2794,
                0x51cc_c178,
            ),
            (
                [65, 69, 140, 83],
                4739,
                [199, 92, 111, 2],
                14230,
                0xc626_b0ea,
            ),
            (
                [12, 22, 207, 184],
                38024,
                [24, 19, 198, 95],
                12898,
                0x5c2b_394a,
            ),
            (
                [209, 142, 163, 6],
                2217,
                [38, 27, 205, 30],
                48228,
                0xafc7_327f,
            ),
            (
                [202, 188, 127, 2],
                1303,
                [153, 39, 163, 191],
                44251,
                0x10e8_28a2,
            ),
        ];
        for (dst, dport, src, sport, want) in cases {
            let flow = FlowTuple {
                src_ip: src,
                dst_ip: dst,
                src_port: sport,
                dst_port: dport,
            };
            assert_eq!(toeplitz(&DEFAULT_RSS_KEY, &flow.hash_input()), want);
        }
    }

    #[test]
    fn round_robin_table_covers_all_queues() {
        let rss = RssConfig::round_robin(3, 128);
        assert_eq!(rss.reta.len(), 128);
        for q in 0..3 {
            assert!(rss.reta.contains(&q));
        }
    }

    #[test]
    fn frame_parsing_rejects_non_ipv4_and_fragments() {
        let mut frame = vec![0u8; 14 + 20 + 8];
        frame[12] = 0x08;
        frame[14] = 0x45;
        frame[14 + 9] = 6;
        frame[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 1]);
        frame[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 2]);
        frame[34..36].copy_from_slice(&1000u16.to_be_bytes());
        frame[36..38].copy_from_slice(&80u16.to_be_bytes());
        let f = FlowTuple::from_frame(&frame).unwrap();
        assert_eq!((f.src_port, f.dst_port), (1000, 80));
        let mut frag = frame.clone();
        frag[14 + 6] = 0x20; // more fragments
        assert!(FlowTuple::from_frame(&frag).is_none());
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(FlowTuple::from_frame(&arp).is_none());
        assert!(FlowTuple::from_frame(&frame[..20]).is_none());
    }
}
