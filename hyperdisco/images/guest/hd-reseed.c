/* hd-reseed: mixes fresh host randomness into the kernel's input pool and makes the kernel reseed its
 * CRNG at once (docs/clones.md, "Random numbers in clones"). The toolstack runs it right after every
 * restore of a save file, so that clones of one saved domain (and a restored domain and the run it was
 * saved from) do not go on with the same random stream.
 *
 * Input: hex digits on stdin (not argv: /proc/PID/cmdline is readable by every user), 16..256 bytes.
 * Linux 6.1 drivers/char/random.c, random_ioctl():
 *   RNDADDENTROPY (CAP_SYS_ADMIN) hashes the bytes into the input pool (write_pool_user) and credits
 *     entropy_count bits, which only matters while the CRNG is not ready yet (credit_init_bits);
 *   RNDRESEEDCRNG (CAP_SYS_ADMIN; -ENODATA while the CRNG is not ready) runs crng_reseed(): a new base
 *     key extracted from the input pool and a new generation, so every CPU's crng derives a new key at
 *     its next use (crng_make_state). A write to /dev/urandom alone only mixes into the pool.
 * Ioctl numbers and struct rand_pool_info: include/uapi/linux/random.h.
 * Prints "hd-reseed: reseeded N bytes" and exits 0, or one line on stderr and exits 1. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define RND_ADD_ENTROPY 0x40085203u /* _IOW('R', 0x03, int [2]) */
#define RND_RESEED_CRNG 0x5207u     /* _IO('R', 0x07) */
#define MIN_BYTES 16
#define MAX_BYTES 256

struct pool_info {
	int entropy_count; /* bits */
	int buf_size;      /* bytes */
	unsigned char buf[MAX_BYTES];
};

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int main(void)
{
	static char text[2 * MAX_BYTES + 2];
	struct pool_info info;
	size_t len = 0;
	ssize_t n;

	while (len < sizeof(text) && (n = read(0, text + len, sizeof(text) - len)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("hd-reseed: stdin");
			return 1;
		}
		len += (size_t)n;
	}
	while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
		len--;
	if (len % 2 != 0 || len / 2 < MIN_BYTES || len / 2 > MAX_BYTES) {
		fprintf(stderr, "hd-reseed: give %d to %d bytes as hex on stdin\n", MIN_BYTES, MAX_BYTES);
		return 1;
	}
	memset(&info, 0, sizeof(info));
	for (size_t i = 0; i < len / 2; i++) {
		int hi = hexval(text[2 * i]), lo = hexval(text[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			fprintf(stderr, "hd-reseed: not hex\n");
			return 1;
		}
		info.buf[i] = (unsigned char)(hi << 4 | lo);
	}
	memset(text, 0, sizeof(text));
	info.buf_size = (int)(len / 2);
	info.entropy_count = info.buf_size * 8;

	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		perror("hd-reseed: /dev/urandom");
		return 1;
	}
	int added = ioctl(fd, RND_ADD_ENTROPY, &info);
	memset(&info, 0, sizeof(info));
	if (added != 0) {
		perror("hd-reseed: RNDADDENTROPY");
		return 1;
	}
	/* crediting a not yet ready CRNG with a full pool reseeds it (credit_init_bits), so ENODATA after
	 * that cannot happen; it is reported rather than ignored */
	if (ioctl(fd, RND_RESEED_CRNG) != 0) {
		perror("hd-reseed: RNDRESEEDCRNG");
		return 1;
	}
	close(fd);
	printf("hd-reseed: reseeded %d bytes\n", (int)(len / 2));
	return 0;
}
