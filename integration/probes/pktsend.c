/* pktsend IFNAME DSTMAC SRCIP DSTIP: one ICMP echo request to DSTIP, written as a whole Ethernet
 * frame on an AF_PACKET socket (no route lookup, no IP-level netfilter hook), twice: through the
 * qdisc and with PACKET_QDISC_BYPASS. Needs CAP_NET_RAW. Prints "sent N" or "pktsend errno=NAME". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static unsigned short csum(const void *p, int n) {
    const unsigned short *w = p; unsigned long s = 0;
    for (; n > 1; n -= 2) s += *w++;
    if (n) s += *(const unsigned char *)w;
    s = (s >> 16) + (s & 0xffff); s += s >> 16;
    return (unsigned short)~s;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: pktsend IFNAME DSTMAC SRCIP DSTIP\n"); return 2; }
    unsigned char f[14 + 20 + 8] = {0}, mac[6];
    if (sscanf(argv[2], "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3], &mac[4], &mac[5]) != 6)
        return 2;
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s < 0) { printf("pktsend errno=%s\n", strerrorname_np(errno)); return 1; }
    struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(argv[1]), .sll_halen = 6};
    memcpy(a.sll_addr, mac, 6);
    memcpy(f, mac, 6); f[6] = 0x02; f[12] = 0x08; f[13] = 0x00;
    unsigned char *ip = f + 14, *icmp = f + 34;
    ip[0] = 0x45; ip[3] = 28; ip[5] = 1; ip[8] = 64; ip[9] = 1;
    inet_pton(AF_INET, argv[3], ip + 12); inet_pton(AF_INET, argv[4], ip + 16);
    unsigned short c = csum(ip, 20); memcpy(ip + 10, &c, 2);
    icmp[0] = 8; icmp[5] = 1; icmp[7] = 1;
    c = csum(icmp, 8); memcpy(icmp + 2, &c, 2);
    int sent = 0;
    for (int bypass = 0; bypass < 2; bypass++) {
        if (bypass) setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &bypass, sizeof bypass);
        if (sendto(s, f, sizeof f, 0, (struct sockaddr *)&a, sizeof a) == (long)sizeof f) sent++;
    }
    printf("sent %d\n", sent);
    return 0;
}
