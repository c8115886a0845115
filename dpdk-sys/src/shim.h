/*
 * The C side of dpdk-sys: the DPDK headers bindgen reads, and out-of-line
 * wrappers (prefix `ix_`) for what DPDK offers only as static inline
 * functions or macros -- the burst calls, the mbuf helpers, rte_errno --
 * which a foreign caller cannot reach otherwise. Each wrapper does exactly
 * what the function it is named after does; shim.c holds the bodies.
 */
#ifndef IX_DPDK_SHIM_H
#define IX_DPDK_SHIM_H

#include <stdint.h>

#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_version.h>

/* rte_eth_rx_burst */
uint16_t ix_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                             struct rte_mbuf **rx_pkts, uint16_t nb_pkts);
/* rte_eth_tx_burst */
uint16_t ix_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                             struct rte_mbuf **tx_pkts, uint16_t nb_pkts);

/* rte_pktmbuf_alloc */
struct rte_mbuf *ix_rte_pktmbuf_alloc(struct rte_mempool *mp);
/* rte_pktmbuf_alloc_bulk: 0 on success, negative (nothing taken) otherwise */
int ix_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs,
                              unsigned int count);
/* rte_pktmbuf_free (the whole chain) */
void ix_rte_pktmbuf_free(struct rte_mbuf *m);
/* rte_pktmbuf_append: pointer to the new bytes, NULL if no tailroom */
char *ix_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
/* rte_pktmbuf_prepend: pointer to the new start, NULL if no headroom */
char *ix_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
/* rte_pktmbuf_adj: pointer to the new start, NULL if len > data_len */
char *ix_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
/* rte_pktmbuf_trim: 0, or -1 if len > data_len of the last segment */
int ix_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
/* rte_pktmbuf_mtod(m, void *) */
void *ix_rte_pktmbuf_mtod(struct rte_mbuf *m);
/* rte_pktmbuf_data_len (this segment) */
uint16_t ix_rte_pktmbuf_data_len(const struct rte_mbuf *m);
/* rte_pktmbuf_pkt_len (whole chain) */
uint32_t ix_rte_pktmbuf_pkt_len(const struct rte_mbuf *m);
/* m->next: the next segment, NULL for the last */
struct rte_mbuf *ix_rte_pktmbuf_next(const struct rte_mbuf *m);
/* rte_pktmbuf_headroom */
uint16_t ix_rte_pktmbuf_headroom(const struct rte_mbuf *m);
/* rte_pktmbuf_tailroom */
uint16_t ix_rte_pktmbuf_tailroom(const struct rte_mbuf *m);
/* rte_mbuf_refcnt_read */
uint16_t ix_rte_mbuf_refcnt_read(const struct rte_mbuf *m);
/* rte_mbuf_refcnt_update: the new count */
uint16_t ix_rte_mbuf_refcnt_update(struct rte_mbuf *m, int16_t value);

/* rte_eth_link_get_nowait: 1 if the link is up, 0 if down, negative errno */
int ix_rte_eth_link_up(uint16_t port_id);

/* rte_errno of the calling thread */
int ix_rte_errno(void);
/* rte_lcore_id: the calling thread's lcore, UINT32_MAX if it has none */
unsigned int ix_rte_lcore_id(void);
/* RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP */
uint64_t ix_rte_eth_rss_ip_tcp_udp(void);
/* RTE_VERSION_NUM(year, month, minor, release) of the headers built with */
uint32_t ix_rte_version_num(void);

#endif
