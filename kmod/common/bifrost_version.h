/* SPDX-License-Identifier: GPL-2.0 */
/* GENERATED from bifrost.__version__ by tools/bifrost/dkms.py; do not edit. */
#ifndef _BIFROST_VERSION_H
#define _BIFROST_VERSION_H
#define BIFROST_VERSION "0.1.0"
#endif
