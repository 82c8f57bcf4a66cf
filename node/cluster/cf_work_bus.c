/* cf_work_bus: in-process links of the work plane. See cf_work_bus.h. */
#include "cf_work_bus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cf_work_bus_endpoint(const char *node_id, const char *which, char *out, size_t outlen)
{
    snprintf(out, outlen, "inproc://cf-work-%s-%s", which, node_id);
}

zsock_t *cf_work_bus_sender(const char *node_id)
{
    char ep[128];
    cf_work_bus_endpoint(node_id, "out", ep, sizeof ep);
    zsock_t *sock = zsock_new(ZMQ_PUSH);
    if (!sock)
        return NULL;
    zsock_set_linger(sock, 0);
    zsock_set_sndtimeo(sock, 1000);
    if (zsock_connect(sock, "%s", ep) < 0) {
        zsock_destroy(&sock);
        return NULL;
    }
    return sock;
}

int cf_work_bus_send(zsock_t *sender, const char *to, const cf_msg_t *msg)
{
    uint8_t *data = NULL;
    size_t size = 0;
    char err[256];
    if (!sender || cf_msg_encode(msg, &data, &size, err, sizeof err) < 0)
        return -1;
    zmsg_t *zmsg = zmsg_new();
    zmsg_addstr(zmsg, to);
    zmsg_addmem(zmsg, data, size);
    free(data);
    return zmsg_send(&zmsg, sender) < 0 ? -1 : 0;
}

zsock_t *cf_work_bus_inbox(const char *node_id, cf_work_dest_t dest)
{
    char ep[128];
    cf_work_bus_endpoint(node_id, dest == CF_WORK_EXEC ? "exec" : "coord", ep, sizeof ep);
    zsock_t *sock = zsock_new(ZMQ_PULL);
    if (!sock)
        return NULL;
    zsock_set_linger(sock, 0);
    if (zsock_bind(sock, "%s", ep) < 0) {
        zsock_destroy(&sock);
        return NULL;
    }
    return sock;
}

int cf_work_bus_recv(zsock_t *inbox, char from[37], cf_msg_t *msg)
{
    zmsg_t *zmsg = zmsg_recv(inbox);
    if (!zmsg)
        return -1;
    int rc = -1;
    zframe_t *who = zmsg_first(zmsg), *payload = zmsg_next(zmsg);
    char err[256];
    if (zmsg_size(zmsg) == 2 && who && payload && zframe_size(who) == 36) {
        memcpy(from, zframe_data(who), 36);
        from[36] = '\0';
        rc = cf_msg_decode(zframe_data(payload), zframe_size(payload), msg, err, sizeof err);
    }
    zmsg_destroy(&zmsg);
    return rc;
}
