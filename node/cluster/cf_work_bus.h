/* cf_work_bus: the in-process links between the node actor (which owns the
 * network) and the two work actors of a node, the executor and the
 * coordinator.
 *
 *   work actor --PUSH--> inproc://cf-work-out-ID --> node actor --> peer
 *                                                   (or back in, when the
 *                                                    target is this node)
 *   node actor --PUSH--> inproc://cf-work-exec-ID  --> executor   (ASSIGN, CANCEL)
 *   node actor --PUSH--> inproc://cf-work-coord-ID --> coordinator (worker replies)
 *
 * Every message is two frames: the other node's id (the target going out,
 * the sender coming in) and the encoded cf_msg_t. The node actor checks
 * what arrives before handing it on: ASSIGN and CANCEL only from the node
 * holding the current epoch, worker replies only while this node is the
 * coordinator at the epoch they carry. Sockets are per thread: each thread
 * that sends opens its own with cf_work_bus_sender. */
#ifndef CF_WORK_BUS_H
#define CF_WORK_BUS_H

#include <czmq.h>
#include <stddef.h>

#include "cf_proto.h"

typedef enum { CF_WORK_EXEC, CF_WORK_COORD } cf_work_dest_t;

/* The endpoint of DEST (or the node's outbox, with OUT true) for NODE_ID. */
void cf_work_bus_endpoint(const char *node_id, const char *which, char *out, size_t outlen);

/* A socket that sends to the node's outbox; NULL on failure. */
zsock_t *cf_work_bus_sender(const char *node_id);

/* Sends MSG to node TO through SENDER. Returns 0, or -1 when MSG does not
 * encode or the node actor is not there. */
int cf_work_bus_send(zsock_t *sender, const char *to, const cf_msg_t *msg);

/* The socket a work actor receives on (binds DEST's endpoint); NULL on
 * failure. */
zsock_t *cf_work_bus_inbox(const char *node_id, cf_work_dest_t dest);

/* Receives one message from INBOX: FROM gets the sender's id, MSG the
 * decoded message. Returns 0, or -1 (nothing usable: dropped). */
int cf_work_bus_recv(zsock_t *inbox, char from[37], cf_msg_t *msg);

#endif
