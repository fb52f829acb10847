/*
 * ckpt_sha.c - SHA-256 over a stream for checkpoint digests (OpenSSL EVP);
 * see ckpt_internal.h.
 */
#include <openssl/evp.h>
#include <stdio.h>
#include "daemon/train/ckpt_internal.h"
#include "kernels/common.h"

int nb__sha_init(nb__sha_t *s)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(c);
        s->ctx = NULL;
        return NB_ENOMEM;
    }
    s->ctx = c;
    return 0;
}

void nb__sha_update(nb__sha_t *s, const void *p, size_t n)
{
    if (n)
        EVP_DigestUpdate((EVP_MD_CTX *)s->ctx, p, n);
}

void nb__sha_final_hex(nb__sha_t *s, char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE] = { 0 };
    unsigned int len = 0;
    EVP_DigestFinal_ex((EVP_MD_CTX *)s->ctx, md, &len);
    for (unsigned i = 0; i < 32; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = '\0';
    nb__sha_free(s);
}

void nb__sha_free(nb__sha_t *s)
{
    EVP_MD_CTX_free((EVP_MD_CTX *)s->ctx);
    s->ctx = NULL;
}

bool nb__sha_hex_ok(const char *s)
{
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return s[64] == '\0';
}
