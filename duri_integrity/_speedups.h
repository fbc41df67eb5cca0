/* What the extension's source files share: each adds its part to the one module, _speedups. */
#ifndef DURI_INTEGRITY_SPEEDUPS_H
#define DURI_INTEGRITY_SPEEDUPS_H

#include <Python.h>

/* _warming.c: add the Warming type (metadata warmed ahead of the walk) to the module. */
int add_warming(PyObject *module);

#endif
