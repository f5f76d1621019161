/* wip/data.h: merged into distgan.h; this empty file only keeps older
   includes of it compiling until they are removed. */
