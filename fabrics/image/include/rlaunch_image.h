/* rlaunch_image.h: the rank side of rlaunch's recovery images (man 3 rlaunch_image).
 *
 * Build: cargo build -p rlaunch-image  (gives target/<profile>/librlaunch_image.so and .a)
 *   cc -I fabrics/image/include app.c -L target/release -lrlaunch_image
 *   (static: app.c target/release/librlaunch_image.a -lpthread -ldl -lm)
 *
 * Outside rlaunch (no RLAUNCH_IMAGE_FD) rli_save and rli_poll do nothing and return
 * RLI_STANDALONE, and the loads find nothing (return 0): the program still runs alone. */
#ifndef RLAUNCH_IMAGE_H
#define RLAUNCH_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. Loads and rli_poll also return 1 (found / an image was sent). */
#define RLI_OK            0
#define RLI_STANDALONE  (-1) /* not under rlaunch: nothing saved */
#define RLI_ETOOBIG     (-2) /* the image exceeds the job's --image-max: not saved */
#define RLI_EIO         (-3) /* the socket to the daemon failed or was closed */
#define RLI_EPROTO      (-4) /* unreadable frame from the daemon */
#define RLI_EINVAL      (-5) /* invalid argument */
#define RLI_ENOMEM      (-6) /* out of memory */
#define RLI_ENOPROVIDER (-7) /* an image was requested, but no provider is registered */
#define RLI_EPROVIDER   (-8) /* the provider returned non-zero */
#define RLI_EBADFD      (-9) /* RLAUNCH_IMAGE_FD names no open descriptor */

/* Scopes of rli_load. */
#define RLI_SCOPE_JOB  0 /* this rank's image of the latest epoch every rank saved */
#define RLI_SCOPE_RANK 1 /* this rank's own latest image */

/* Produces the image when rlaunch asks (--image-interval). *epoch comes set to rlaunch's
 * number for the request; set it to your own epoch (an iteration) if you also call rli_save.
 * *buf must stay valid until rli_poll returns. Return 0, or non-zero to send nothing. */
typedef int (*rli_provider_fn)(void *ctx, uint64_t *epoch, const void **buf, size_t *len);

/* Registers (NULL: removes) the provider. */
int rli_set_provider(rli_provider_fn cb, void *ctx);

/* Call at safe points; never blocks unless an image is requested, then runs the provider and
 * saves its image. 1: sent; 0: nothing requested; < 0: error. */
int rli_poll(void);

/* Saves len bytes at buf as this rank's image of epoch; returns once the daemon holds it. */
int rli_save(uint64_t epoch, const void *buf, size_t len);

/* Loads this rank's image. 1: found, *buf (free with rli_free), *len and *epoch set;
 * 0: none (a first start, or not under rlaunch); < 0: error. epoch may be NULL. */
int rli_load(int scope, void **buf, size_t *len, uint64_t *epoch);

/* Loads rank's latest image (another rank's), like rli_load. */
int rli_load_rank(uint32_t rank, void **buf, size_t *len, uint64_t *epoch);

/* Frees a buffer from rli_load or rli_load_rank (free(3) does too). */
void rli_free(void *buf);

/* Times this process was restarted (RLAUNCH_RESTARTS), 0 on a first start. */
unsigned rli_restarts(void);

/* The job-scope restart generation (RLAUNCH_GENERATION), 0 on a first start. */
unsigned rli_generation(void);

/* 1 under rlaunch with an image socket, else 0. */
int rli_active(void);

/* A static description of a return code. */
const char *rli_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif
