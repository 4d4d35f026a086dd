// Built against an installed mqstore only (CMake find_package), by run.sh.
#include <mqstore.hpp>

#include <cstdio>
#include <string>

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: hello_cpp DIR\n");
        return 2;
    }
    try {
        auto store = mqstore::Store::open(argv[1]);
        store.create_shard("s");
        mqstore::Message m;
        m.value = "installed";
        store.append("s", m);
        auto result = store.read("s", 0, 10, 1 << 20);
        std::string got;
        for (const auto &record : result)
            got += std::string(record.value());
        if (got != "installed") {
            std::fprintf(stderr, "read back '%s'\n", got.c_str());
            return 1;
        }
        store.close();
    } catch (const mqstore::Error &e) {
        std::fprintf(stderr, "mqstore: %s\n", e.what());
        return 1;
    }
    std::printf("c++ ok %s\n", mqs_version());
    return 0;
}
