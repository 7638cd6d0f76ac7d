/*
 * fake_nvml.c - a stand-in for libnvidia-ml.so.1 so tests and benchmarks run without a GPU.
 *
 * Values and faults come from a key=value state file that is looked at on every call, so a test
 * changes the "hardware" by rewriting the file (atomically: temp file + rename). The file is
 * `fake_nvml.state` next to this library if it exists (lets parallel tests each own a copy of
 * the library), otherwise the path in $FAKE_NVML_STATE. A call costs one stat(2) while the file
 * is unchanged (a real driver answers from memory; re-parsing the text per call made the fake
 * the largest CPU cost of an agent polling 8 GPUs); any change of inode, size, mtime or ctime
 * re-parses it, and a file changed within the last 50 ms is never cached (timestamps are
 * coarse: a second rewrite in the same tick must still be seen).
 *
 * Keys (gpuN.* for device N, 0-based):
 *   init_error=9             nvmlInit_v2 returns this code (9 = DRIVER_NOT_LOADED)
 *   count=2                  number of devices
 *   slow_ms=N                every call sleeps N ms first (global)
 *   init_slow_ms=N           nvmlInit_v2 sleeps N ms first (a slow driver attach)
 *   driver_error=N           every call on an initialised library returns N (the driver went
 *                            away under a live handle: 9 = DRIVER_NOT_LOADED, 1 = UNINITIALIZED)
 *   driver_generation=N      the loaded driver's version: handles from an init under another
 *                            generation get LIB_RM_VERSION_MISMATCH (18) until a new init
 *   driver_version=...       nvmlSystemGetDriverVersion
 *   gpuN.name / gpuN.uuid
 *   gpuN.util / gpuN.mem_util            percent
 *   gpuN.mem_total / gpuN.mem_used       bytes
 *   gpuN.temp (C) gpuN.power_mw gpuN.power_limit_mw gpuN.sm_clock (MHz) gpuN.fan (%)
 *   gpuN.ecc_corrected gpuN.ecc_uncorrected gpuN.pcie_tx_kbs gpuN.pcie_rx_kbs gpuN.throttle
 *   gpuN.procs=pid:bytes,pid:bytes       compute processes
 *   gpuN.xid=79,13                       XID events, delivered once each, in order
 *   gpuN.lost=1                          every device call returns GPU_IS_LOST
 *   gpuN.slow_ms=N                       every call on this device sleeps N ms first
 *   gpuN.unsupported=temp,fan,...        NOT_SUPPORTED for these fields (util, memory, temp,
 *                                        power, power_limit, sm_clock, fan, ecc, pcie, throttle,
 *                                        procs, events)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_GPUS 16
#define MAX_PROCS 32
#define MAX_XIDS 64

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_UNKNOWN = 999,
};

#define EVENT_XID 8ULL

struct fake_device {
    unsigned index;
};
typedef struct fake_device *nvmlDevice_t;

typedef struct {
    unsigned gpu;
    unsigned memory;
} nvmlUtilization_t;

typedef struct {
    unsigned version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned pid;
    unsigned long long usedGpuMemory;
    unsigned gpuInstanceId;
    unsigned computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned gpuInstanceId;
    unsigned computeInstanceId;
} nvmlEventData_t;

struct fake_event_set {
    int registered[MAX_GPUS];
};
typedef struct fake_event_set *nvmlEventSet_t;

struct gpu_state {
    char name[96];
    char uuid[96];
    unsigned util, mem_util;
    unsigned long long mem_total, mem_used;
    unsigned temp, power_mw, power_limit_mw, sm_clock, fan;
    unsigned long long ecc_corrected, ecc_uncorrected, throttle;
    unsigned pcie_tx, pcie_rx;
    int lost;
    unsigned slow_ms;
    char unsupported[256];
    unsigned nprocs;
    nvmlProcessInfo_t procs[MAX_PROCS];
    unsigned nxids;
    unsigned long long xids[MAX_XIDS];
};

struct state {
    int init_error;
    unsigned count;
    unsigned slow_ms;
    unsigned init_slow_ms;
    int driver_error;
    long driver_generation;
    char driver_version[64];
    struct gpu_state gpus[MAX_GPUS];
};

static struct fake_device devices[MAX_GPUS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialized;
/* XID events already delivered per device: the state file lists them all, we hand out the rest. */
static unsigned xids_delivered[MAX_GPUS];

static void sleep_ms(unsigned ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* `fake_nvml.state` next to this library (where it lives never changes), else "". */
static char beside_path[PATH_MAX];
static pthread_once_t beside_once = PTHREAD_ONCE_INIT;

static void find_beside_library(void) {
    Dl_info info;
    if (dladdr((void *)&find_beside_library, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        if (slash)
            snprintf(beside_path, sizeof beside_path, "%.*s/fake_nvml.state",
                     (int)(slash - info.dli_fname), info.dli_fname);
    }
}

static const char *beside_library(void) {
    pthread_once(&beside_once, find_beside_library);
    return beside_path;
}

/* The state file in use and its stat (st->st_ino == 0 when there is none). */
static void state_path(char *out, size_t len, struct stat *st) {
    const char *beside = beside_library();
    if (beside[0] && stat(beside, st) == 0) {
        snprintf(out, len, "%s", beside);
        return;
    }
    const char *env = getenv("FAKE_NVML_STATE");
    snprintf(out, len, "%s", env ? env : "");
    if (!out[0] || stat(out, st) != 0) memset(st, 0, sizeof *st);
}

/* The last parse and the stat it was made under (see the header: when it may be reused). */
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct stat cached_stat;
static struct state cached;
static int cache_valid;

static int same_file(const struct stat *a, const struct stat *b) {
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* True when the file's last change is at least 50 ms old: a later change gets a later ctime. */
static int settled(const struct stat *st) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long long age_ms = (long long)(now.tv_sec - st->st_ctim.tv_sec) * 1000 +
                       (now.tv_nsec - st->st_ctim.tv_nsec) / 1000000;
    return age_ms >= 50;
}

static void set_gpu_defaults(struct gpu_state *g, unsigned i) {
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "Fake GPU %u", i);
    snprintf(g->uuid, sizeof g->uuid, "GPU-fake-%04u", i);
    g->mem_total = 16ULL << 30;
    g->power_limit_mw = 300000;
}

static void parse_procs(struct gpu_state *g, const char *v) {
    g->nprocs = 0;
    while (*v && g->nprocs < MAX_PROCS) {
        char *end;
        unsigned long pid = strtoul(v, &end, 10);
        if (end == v || *end != ':') return;
        v = end + 1;
        unsigned long long bytes = strtoull(v, &end, 10);
        g->procs[g->nprocs].pid = (unsigned)pid;
        g->procs[g->nprocs].usedGpuMemory = bytes;
        g->procs[g->nprocs].gpuInstanceId = 0xFFFFFFFFu;
        g->procs[g->nprocs].computeInstanceId = 0xFFFFFFFFu;
        g->nprocs++;
        v = end;
        if (*v == ',') v++;
    }
}

static void parse_xids(struct gpu_state *g, const char *v) {
    g->nxids = 0;
    while (*v && g->nxids < MAX_XIDS) {
        char *end;
        unsigned long long code = strtoull(v, &end, 10);
        if (end == v) return;
        g->xids[g->nxids++] = code;
        v = end;
        if (*v == ',') v++;
    }
}

static void apply_gpu_key(struct gpu_state *g, const char *k, const char *v) {
    unsigned long long n = strtoull(v, NULL, 10);
    if (!strcmp(k, "name")) snprintf(g->name, sizeof g->name, "%s", v);
    else if (!strcmp(k, "uuid")) snprintf(g->uuid, sizeof g->uuid, "%s", v);
    else if (!strcmp(k, "util")) g->util = (unsigned)n;
    else if (!strcmp(k, "mem_util")) g->mem_util = (unsigned)n;
    else if (!strcmp(k, "mem_total")) g->mem_total = n;
    else if (!strcmp(k, "mem_used")) g->mem_used = n;
    else if (!strcmp(k, "temp")) g->temp = (unsigned)n;
    else if (!strcmp(k, "power_mw")) g->power_mw = (unsigned)n;
    else if (!strcmp(k, "power_limit_mw")) g->power_limit_mw = (unsigned)n;
    else if (!strcmp(k, "sm_clock")) g->sm_clock = (unsigned)n;
    else if (!strcmp(k, "fan")) g->fan = (unsigned)n;
    else if (!strcmp(k, "ecc_corrected")) g->ecc_corrected = n;
    else if (!strcmp(k, "ecc_uncorrected")) g->ecc_uncorrected = n;
    else if (!strcmp(k, "throttle")) g->throttle = n;
    else if (!strcmp(k, "pcie_tx_kbs")) g->pcie_tx = (unsigned)n;
    else if (!strcmp(k, "pcie_rx_kbs")) g->pcie_rx = (unsigned)n;
    else if (!strcmp(k, "lost")) g->lost = n != 0;
    else if (!strcmp(k, "slow_ms")) g->slow_ms = (unsigned)n;
    else if (!strcmp(k, "unsupported")) snprintf(g->unsupported, sizeof g->unsupported, "%s", v);
    else if (!strcmp(k, "procs")) parse_procs(g, v);
    else if (!strcmp(k, "xid")) parse_xids(g, v);
}

/* Parses the whole state file; a missing file means "no GPUs" rather than a crash. */
static void parse_state(struct state *s, const char *path) {
    memset(s, 0, sizeof *s);
    snprintf(s->driver_version, sizeof s->driver_version, "550.54.15");
    for (unsigned i = 0; i < MAX_GPUS; i++) set_gpu_defaults(&s->gpus[i], i);
    FILE *f = path[0] ? fopen(path, "r") : NULL;
    if (!f) return;
    char line[2048];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        char *eq = strchr(line, '=');
        if (!eq || line[0] == '#') continue;
        *eq = 0;
        const char *k = line, *v = eq + 1;
        if (!strcmp(k, "init_error")) s->init_error = atoi(v);
        else if (!strcmp(k, "count")) s->count = (unsigned)atoi(v);
        else if (!strcmp(k, "slow_ms")) s->slow_ms = (unsigned)atoi(v);
        else if (!strcmp(k, "init_slow_ms")) s->init_slow_ms = (unsigned)atoi(v);
        else if (!strcmp(k, "driver_error")) s->driver_error = atoi(v);
        else if (!strcmp(k, "driver_generation")) s->driver_generation = atol(v);
        else if (!strcmp(k, "driver_version")) snprintf(s->driver_version, sizeof s->driver_version, "%s", v);
        else if (!strncmp(k, "gpu", 3)) {
            char *dot;
            unsigned long idx = strtoul(k + 3, &dot, 10);
            if (*dot == '.' && idx < MAX_GPUS) apply_gpu_key(&s->gpus[idx], dot + 1, v);
        }
    }
    fclose(f);
    if (s->count > MAX_GPUS) s->count = MAX_GPUS;
}

/* The current state: the last parse while the file is unchanged, else a fresh one. A file
 * replaced between the stat and the parse only costs a miss: its new stat differs. */
static void load_state(struct state *s) {
    char path[PATH_MAX];
    struct stat st;
    state_path(path, sizeof path, &st);
    if (st.st_ino) {
        pthread_mutex_lock(&cache_lock);
        int hit = cache_valid && same_file(&st, &cached_stat);
        if (hit) memcpy(s, &cached, sizeof *s);
        pthread_mutex_unlock(&cache_lock);
        if (hit) return;
    }
    parse_state(s, path);
    if (st.st_ino && settled(&st)) {
        pthread_mutex_lock(&cache_lock);
        memcpy(&cached, s, sizeof *s);
        cached_stat = st;
        cache_valid = 1;
        pthread_mutex_unlock(&cache_lock);
    }
}

static int unsupported(const struct gpu_state *g, const char *field) {
    size_t n = strlen(field);
    const char *p = g->unsupported;
    while (*p) {
        size_t len = strcspn(p, ",");
        if (len == n && !strncmp(p, field, n)) return 1;
        p += len;
        if (*p == ',') p++;
    }
    return 0;
}

/* Common prologue of every device call: state, faults and the device's record. */
/* The driver generation the last successful init attached to. */
static long init_generation;

/* What a call on an initialised library answers when the driver went away or was reloaded. */
static nvmlReturn_t driver_fault(const struct state *s) {
    if (s->driver_error) return s->driver_error;
    if (s->driver_generation != init_generation) return NVML_ERROR_LIB_RM_VERSION_MISMATCH;
    return NVML_SUCCESS;
}

static nvmlReturn_t begin(struct state *s, nvmlDevice_t d, const char *field, struct gpu_state **out) {
    load_state(s);
    if (s->slow_ms) sleep_ms(s->slow_ms);
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    nvmlReturn_t fault = driver_fault(s);
    if (fault != NVML_SUCCESS) return fault;
    if (!d || d < devices || d >= devices + MAX_GPUS || d->index >= s->count)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct gpu_state *g = &s->gpus[d->index];
    if (g->slow_ms) sleep_ms(g->slow_ms);
    if (g->lost) return NVML_ERROR_GPU_IS_LOST;
    if (field && unsupported(g, field)) return NVML_ERROR_NOT_SUPPORTED;
    *out = g;
    return NVML_SUCCESS;
}

#define BEGIN(field)                                   \
    struct state *s = malloc(sizeof(struct state));   \
    if (!s) return NVML_ERROR_UNKNOWN;                 \
    struct gpu_state *g = NULL;                        \
    nvmlReturn_t rc = begin(s, device, field, &g);     \
    if (rc != NVML_SUCCESS) {                          \
        free(s);                                       \
        return rc;                                     \
    }
#define END(value) \
    free(s);       \
    return (value)

nvmlReturn_t nvmlInit_v2(void) {
    struct state *s = malloc(sizeof(struct state));
    if (!s) return NVML_ERROR_UNKNOWN;
    load_state(s);
    if (s->slow_ms) sleep_ms(s->slow_ms);
    if (s->init_slow_ms) sleep_ms(s->init_slow_ms);
    int err = s->init_error ? s->init_error : s->driver_error;
    long generation = s->driver_generation;
    free(s);
    if (err) return err;
    pthread_mutex_lock(&lock);
    for (unsigned i = 0; i < MAX_GPUS; i++) devices[i].index = i;
    init_generation = generation;
    initialized++;
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned flags) {
    (void)flags;
    return nvmlInit_v2();
}

nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }

nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&lock);
    if (initialized > 0) initialized--;
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t copy_string(const char *src, char *dst, unsigned len) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned length) {
    struct state *s = malloc(sizeof(struct state));
    if (!s) return NVML_ERROR_UNKNOWN;
    load_state(s);
    nvmlReturn_t rc = initialized ? copy_string(s->driver_version, version, length)
                                  : NVML_ERROR_UNINITIALIZED;
    free(s);
    return rc;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *count) {
    struct state *s = malloc(sizeof(struct state));
    if (!s) return NVML_ERROR_UNKNOWN;
    load_state(s);
    if (s->slow_ms) sleep_ms(s->slow_ms);
    nvmlReturn_t rc = NVML_SUCCESS;
    if (!initialized) rc = NVML_ERROR_UNINITIALIZED;
    else if (driver_fault(s) != NVML_SUCCESS) rc = driver_fault(s);
    else if (!count) rc = NVML_ERROR_INVALID_ARGUMENT;
    else *count = s->count;
    free(s);
    return rc;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned index, nvmlDevice_t *device) {
    struct state *s = malloc(sizeof(struct state));
    if (!s) return NVML_ERROR_UNKNOWN;
    load_state(s);
    nvmlReturn_t rc = NVML_SUCCESS;
    if (!initialized) rc = NVML_ERROR_UNINITIALIZED;
    else if (driver_fault(s) != NVML_SUCCESS) rc = driver_fault(s);
    else if (!device || index >= s->count) rc = NVML_ERROR_INVALID_ARGUMENT;
    else *device = &devices[index];
    free(s);
    return rc;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned *index) {
    BEGIN(NULL);
    *index = device->index;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned length) {
    BEGIN(NULL);
    rc = copy_string(g->name, name, length);
    END(rc);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned length) {
    BEGIN(NULL);
    rc = copy_string(g->uuid, uuid, length);
    END(rc);
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *u) {
    BEGIN("util");
    u->gpu = g->util;
    u->memory = g->mem_util;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *m) {
    BEGIN("memory");
    /* NVML_STRUCT_VERSION(Memory, 2): size | 2 << 24 */
    if (!m || m->version != ((unsigned)sizeof(nvmlMemory_v2_t) | (2u << 24))) {
        END(25); /* NVML_ERROR_ARGUMENT_VERSION_MISMATCH */
    }
    m->total = g->mem_total;
    m->used = g->mem_used;
    m->reserved = 0;
    m->free = g->mem_total > g->mem_used ? g->mem_total - g->mem_used : 0;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned *temp) {
    BEGIN("temp");
    if (sensor != 0) {
        END(NVML_ERROR_NOT_SUPPORTED);
    }
    *temp = g->temp;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned *power) {
    BEGIN("power");
    *power = g->power_mw;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned *limit) {
    BEGIN("power_limit");
    *limit = g->power_limit_mw;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned *limit) {
    BEGIN("power_limit");
    *limit = g->power_limit_mw;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned *clock) {
    BEGIN("sm_clock");
    *clock = type == 1 ? g->sm_clock : g->sm_clock / 2;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetNumFans(nvmlDevice_t device, unsigned *num) {
    BEGIN("fan");
    *num = 1;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t device, unsigned *speed) {
    BEGIN("fan");
    *speed = g->fan;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetFanSpeed_v2(nvmlDevice_t device, unsigned fan, unsigned *speed) {
    BEGIN("fan");
    if (fan != 0) {
        END(NVML_ERROR_INVALID_ARGUMENT);
    }
    *speed = g->fan;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int error_type, int counter_type,
                                         unsigned long long *count) {
    (void)counter_type;
    BEGIN("ecc");
    *count = error_type == 0 ? g->ecc_corrected : g->ecc_uncorrected;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t device, int counter, unsigned *value) {
    BEGIN("pcie");
    *value = counter == 0 ? g->pcie_tx : g->pcie_rx;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device, unsigned long long *r) {
    BEGIN("throttle");
    *r = g->throttle;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device, unsigned long long *r) {
    return nvmlDeviceGetCurrentClocksThrottleReasons(device, r);
}

/* Two-call protocol: NULL buffer (or too small) → INSUFFICIENT_SIZE and the count. */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned *count,
                                                     nvmlProcessInfo_t *infos) {
    BEGIN("procs");
    if (!count) {
        END(NVML_ERROR_INVALID_ARGUMENT);
    }
    if (g->nprocs == 0) {
        *count = 0;
        END(NVML_SUCCESS);
    }
    if (!infos || *count < g->nprocs) {
        *count = g->nprocs;
        END(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    memcpy(infos, g->procs, g->nprocs * sizeof(nvmlProcessInfo_t));
    *count = g->nprocs;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    BEGIN("events");
    *types = EVENT_XID;
    END(NVML_SUCCESS);
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    *set = calloc(1, sizeof(struct fake_event_set));
    return *set ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                      nvmlEventSet_t set) {
    BEGIN("events");
    if (!set) {
        END(NVML_ERROR_INVALID_ARGUMENT);
    }
    if (!(types & EVENT_XID)) {
        END(NVML_ERROR_NOT_SUPPORTED);
    }
    pthread_mutex_lock(&lock);
    set->registered[device->index] = 1;
    pthread_mutex_unlock(&lock);
    END(NVML_SUCCESS);
}

/* Delivers the next undelivered XID of any registered device, polling the file until timeout. */
nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned timeoutms) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    struct state *s = malloc(sizeof(struct state));
    if (!s) return NVML_ERROR_UNKNOWN;
    unsigned waited = 0;
    for (;;) {
        load_state(s);
        pthread_mutex_lock(&lock);
        for (unsigned i = 0; i < s->count; i++) {
            struct gpu_state *g = &s->gpus[i];
            if (!set->registered[i] || g->lost) continue;
            if (xids_delivered[i] < g->nxids) {
                data->device = &devices[i];
                data->eventType = EVENT_XID;
                data->eventData = g->xids[xids_delivered[i]];
                data->gpuInstanceId = 0xFFFFFFFFu;
                data->computeInstanceId = 0xFFFFFFFFu;
                xids_delivered[i]++;
                pthread_mutex_unlock(&lock);
                free(s);
                return NVML_SUCCESS;
            }
        }
        pthread_mutex_unlock(&lock);
        if (waited >= timeoutms) break;
        /* A real driver blocks on an interrupt; poll the file rarely so the fake costs little. */
        unsigned step = timeoutms - waited < 100 ? timeoutms - waited : 100;
        sleep_ms(step);
        waited += step;
    }
    free(s);
    return NVML_ERROR_TIMEOUT;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    free(set);
    return NVML_SUCCESS;
}
