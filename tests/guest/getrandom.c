/* Prints 16 bytes from the kernel's getrandom(2) in hex: two clones of one saved domain must print
 * different values (tests/integration/test_clones.py). */
#include <stdio.h>
#include <sys/random.h>

int main(void)
{
	unsigned char buf[16];
	if (getrandom(buf, sizeof(buf), 0) != (ssize_t)sizeof(buf)) {
		perror("getrandom");
		return 1;
	}
	printf("getrandom=");
	for (unsigned i = 0; i < sizeof(buf); i++)
		printf("%02x", buf[i]);
	printf("\n");
	return 0;
}
