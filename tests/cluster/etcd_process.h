// Test helper: a real single-member etcd (Debian's etcd-server 3.4) on free loopback ports with a
// temporary data directory, for the cluster tests. Killed (SIGKILL) on destruction; the data
// directory is removed with it.
#ifndef KVSTASH_TESTS_CLUSTER_ETCD_PROCESS_H_
#define KVSTASH_TESTS_CLUSTER_ETCD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "kvstash/common/status.h"

namespace kvstash::testing {

class EtcdProcess {
 public:
  // FailedPrecondition when /usr/bin/etcd is missing (tests skip then). `command_prefix` runs
  // it inside e.g. `ip netns exec NS`; `host` is the address it listens on.
  static Result<std::unique_ptr<EtcdProcess>> Start(
      const std::string& host = "127.0.0.1", const std::vector<std::string>& command_prefix = {});
  ~EtcdProcess();

  const std::string& endpoint() const { return endpoint_; }  // http://host:port
  pid_t pid() const { return pid_; }
  void Kill();    // SIGKILL and reap
  void Pause();   // SIGSTOP
  void Resume();  // SIGCONT
  // Starts it again on the same data directory and port (after Kill); waits until it answers.
  Status Restart();
  std::string Log() const;

 private:
  EtcdProcess() = default;
  Status Spawn();
  Status WaitReady(int timeout_ms);

  pid_t pid_ = -1;
  std::string dir_, host_, endpoint_, log_;
  int client_port_ = 0, peer_port_ = 0;
  std::vector<std::string> prefix_;
};

}  // namespace kvstash::testing

#endif  // KVSTASH_TESTS_CLUSTER_ETCD_PROCESS_H_
