/* version.h - the version every Nebula binary prints with --version and
 * reports on its status socket. */
#ifndef NB_VERSION_H
#define NB_VERSION_H

#define NB_VERSION "0.1.0"

#endif
